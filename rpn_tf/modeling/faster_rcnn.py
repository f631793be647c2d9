"""``FasterRCNN``: an ``RPNModel`` (backbone, anchors + target encoder, RPN head, losses, proposals) plus
``RoiHeads`` (multi-level ROI Align, ``BoxHead``, ROI sampling and detection post-processing), trained jointly by one
custom ``train_step`` under ``model.fit``.

Shape shorthand: B images, M padded GT boxes, N proposals, R sampled ROIs, K object classes, D detections.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from rpn_tf.modeling.backbones import feature_list
from rpn_tf.modeling.base import ROI_SAMPLING_STREAM, RPN_SAMPLING_STREAM, DetectionModel, boxes_in_original_pixels, \
    replicas_in_sync
from rpn_tf.modeling.losses import global_sum
from rpn_tf.modeling.metrics import RatioMean
from rpn_tf.modeling.roi_heads import RoiHeads
from rpn_tf.modeling.rpn_model import RPNModel
from rpn_tf.ops.box_ops import parse_bounding_box_format

DETECTION_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


@keras.saving.register_keras_serializable(package="rpn_tf")
class FasterRCNN(DetectionModel):
    """Faster R-CNN (Ren et al. 2015) on rpn-tf's RPN, assembled as torchvision's ``GeneralizedRCNN``: the
    ``RPNModel`` (its transform ``to_canvas``, backbone ``features``, head, proposals and losses — used through its
    public methods) and ``RoiHeads`` (ROI Align → ``BoxHead``, ROI sampling, losses, post-processing).

    ``call(images, valid_sizes=None)`` takes ``[B, H, W, 3]`` canvas images (0–255) and returns the detections in
    canvas pixels (``DETECTION_OUTPUTS``), clipped to each image's part of the canvas (``valid_sizes`` ``[B, 2]``;
    default the whole canvas) — the rule ``predict`` follows too. ``predict`` takes raw images of any size and
    returns detections in each image's own pixels, as the exported SavedModel does. ``num_detections`` is float32
    everywhere (the TF Object Detection API's convention), as ``detection_classes`` (ids 1…K).

    Training data for ``fit`` / ``evaluate``: ``(images, targets)`` with canvas images and targets holding padded
    ``gt_boxes`` ``[B, M, 4]`` (yxyx canvas pixels) and ``gt_classes`` ``[B, M]`` (class ids 1…K, -1 padding) —
    what ``ds.map(model.target_encoder)`` gives — or KerasHub's / Keras's ``{"boxes", "classes"}`` /
    ``{"boxes", "labels"}`` in ``bounding_box_format``. Batches are read and checked on the host before the step
    (``check_batch``), so a class 0 on a real box, a class above K and NaN images raise a named error under XLA
    too. The RPN's labels are computed in the step when the targets do not hold them.

    Args:
      num_classes: K, object classes (background excluded).
      rpn: an ``RPNModel``, or a dict of ``RPNModel`` arguments (default: ``RPNModel()``, the article's VGG16 RPN).
      roi_sampler_config: ``RoiSamplerConfig`` (or dict): the article's 128 ROIs at 25 % positives, GT boxes
        appended to the proposals, stage-two coder weights (10, 10, 5, 5).
      detection_config: ``DetectionConfig`` (or dict): score threshold 0.05, per-class NMS 0.5, 100 detections.
      roi_strides: feature strides ROI Align reads (consecutive powers of two); default the RPN backbone's single
        map, or for a pyramid every level but a subsampled top one beyond stride 32 (P2–P5 of P2–P6, detectron2's).
      roi_output_size / sampling_ratio / aligned: ROI Align's (7, 2, half-pixel aligned).
      representation_size / num_fc / num_conv / conv_channels: ``BoxHead``'s (2 × FC 1024).
      rpn_loss_weight: weight of the RPN's loss in the total (1).
      smooth_l1_beta: the box head's smooth-L1 transition (1/9, torchvision's).
      bounding_box_format: format of the ``boxes`` of dict targets (``BOUNDING_BOX_FORMATS``; ``rel_*`` in units of
        the canvas; ``gt_boxes`` are always yxyx canvas pixels).
      seed: seeds the anchor and ROI sampling of the steps; ``None``: drawn from the global seed
        (``keras.utils.set_random_seed``), so a seeded program repeats.
      level_mapper: the FPN level of an ROI (``"fpn"``, or ``"torchvision"``'s epsilon: ``assign_levels``).
    """

    def __init__(self, num_classes, rpn=None, roi_sampler_config=None, detection_config=None, roi_strides=None,
                 roi_output_size=7, sampling_ratio=2, aligned=True, representation_size=1024, num_fc=2, num_conv=0,
                 conv_channels=256, rpn_loss_weight=1.0, smooth_l1_beta=1.0 / 9.0, bounding_box_format="yxyx",
                 seed=None, level_mapper="fpn", **kwargs):
        super().__init__(**kwargs)
        if isinstance(rpn, dict):
            rpn = keras.saving.deserialize_keras_object(rpn) if "class_name" in rpn else RPNModel(**rpn)
        self.rpn = rpn if rpn is not None else RPNModel()
        if not isinstance(self.rpn, RPNModel):
            raise TypeError(f"rpn must be an RPNModel or a dict of its arguments, got {type(rpn).__name__}")
        parse_bounding_box_format(bounding_box_format)  # a ValueError naming the choices
        self.bounding_box_format = bounding_box_format
        self.rpn_loss_weight = float(rpn_loss_weight)
        self.seed = seed
        self.seed_generator = self._make_seed_generator(seed, "roi_sampling_seed")
        channels = int(feature_list(self.rpn.backbone.output)[0].shape[-1])
        self.roi_heads = RoiHeads(num_classes, self.rpn.backbone_strides, channels, roi_strides, roi_sampler_config,
                                  detection_config, roi_output_size, sampling_ratio, aligned, representation_size,
                                  num_fc, num_conv, conv_channels, smooth_l1_beta, level_mapper, name="roi_heads")
        self.trackers = {name: RatioMean(name=name) for name in (
            "loss", "rpn_loss", "roi_classification_loss", "roi_box_loss", "roi_accuracy")}
        self.built = True

    @classmethod
    def from_torchvision(cls, source, batch_norm_epsilon="auto", trainable_backbone_layers=3, **kwargs):
        """torchvision's ``fasterrcnn_resnet50_fpn`` with the weights of ``source`` — a ``.pth`` checkpoint (read
        without torch), a ``.safetensors`` file or a dict of NumPy arrays with torchvision's state-dict names —
        built from rpn-tf's parts with torchvision's settings (``rpn_tf.interop.torchvision``): the same proposals
        and detections as torchvision on the same images. K is read from the checkpoint (90 for COCO's:
        ``detection_classes`` are torchvision's labels).

        Args:
          batch_norm_epsilon: ``"auto"`` (0 for ``FrozenBatchNorm2d`` checkpoints — the COCO weights and their
            fine-tunes, which torchvision loads with ε = 0 —, 1e-5 for ``BatchNorm2d`` ones) or a number.
          trainable_backbone_layers: torchvision's (3): the ResNet stages that train when fine-tuned.
          **kwargs: ``image_size`` (the ``tf.data`` encoder's training canvas, default 1344 × 1344; ``predict`` and
            serving use each batch's own canvas, as torchvision) and ``FasterRCNN``'s (``seed``,
            ``detection_config``…).
        """
        from rpn_tf.interop.torchvision import faster_rcnn_from_torchvision

        return faster_rcnn_from_torchvision(source, batch_norm_epsilon, trainable_backbone_layers, **kwargs)

    def with_num_classes(self, num_classes):
        """A copy of this detector for ``num_classes`` classes — to fine-tune a detector (e.g. torchvision's COCO
        weights) on your classes: the RPN and the box head's hidden layers keep their weights, the class predictor
        and box regressor start afresh (torchvision's recipe: a new ``FastRCNNPredictor``)."""
        config = self.get_config()
        config["num_classes"] = int(num_classes)
        model = type(self).from_config(config)
        model.rpn.set_weights(self.rpn.get_weights())
        kept = zip(model.box_head.convs + model.box_head.fcs, self.box_head.convs + self.box_head.fcs)
        for ours, theirs in kept:
            ours.set_weights(theirs.get_weights())
        return model

    # -- the parts -----------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.roi_heads.num_classes

    @property
    def checked_num_classes(self):
        return self.num_classes

    @property
    def box_head(self):
        return self.roi_heads.box_head

    @property
    def roi_sampler_config(self):
        return self.roi_heads.roi_sampler_config

    @property
    def detection_config(self):
        return self.roi_heads.detection_config

    @property
    def roi_strides(self):
        return self.roi_heads.roi_strides

    @property
    def image_size(self):
        return self.rpn.image_size

    @property
    def resize(self):
        return self.rpn.resize

    @property
    def target_encoder(self):
        """The RPN's ``RpnTargetEncoder``: ``ds.map(model.target_encoder)`` gives training elements."""
        return self.rpn.target_encoder

    def to_canvas(self, images):
        return self.rpn.to_canvas(images)

    # -- inference -----------------------------------------------------------------------------------------------
    def detect(self, images, valid_sizes=None, training=False, xla=None):
        """Detections of canvas images in canvas pixels, clipped to ``valid_sizes`` (``[B, 2]``, each image's part
        of the canvas; default the whole canvas), plus the proposals (``proposal_boxes``, ``num_proposals``).
        ``xla`` (default: this model's ``jit_compile``) picks the XLA-compilable NMS and ROI Align."""
        xla = bool(self.jit_compile) if xla is None else bool(xla)
        if valid_sizes is None:
            valid_sizes = tf.tile(tf.cast(tf.shape(images)[1:3], tf.float32)[None], [tf.shape(images)[0], 1])
        valid_sizes = tf.cast(valid_sizes, tf.float32)
        features = self.rpn.features(images, training=training, any_canvas=True)
        proposals = self.rpn.propose(self.rpn.head_outputs(features), training=False, valid_sizes=valid_sizes,
                                     xla=xla, features=features, canvas=images)
        detections = self.roi_heads.detect(features, proposals["boxes"], proposals["num_proposals"], valid_sizes,
                                           xla)
        detections["num_detections"] = tf.cast(detections["num_detections"], tf.float32)
        return {**detections, "proposal_boxes": proposals["boxes"], "num_proposals": proposals["num_proposals"]}

    def call(self, images, training=None, valid_sizes=None):
        detections = self.detect(images, valid_sizes, training=bool(training))
        return {key: detections[key] for key in DETECTION_OUTPUTS}

    def detections_in_original_pixels(self, canvas, image_scale, valid_size, original_size, xla=None):
        """Detections of canvas images mapped back to each original image's pixels (clipped to it); the inputs are
        ``to_canvas``'s outputs. ``xla``: as ``detect`` (an export passes its own choice)."""
        detections = self.detect(canvas, valid_sizes=valid_size, xla=xla)
        boxes = boxes_in_original_pixels(detections["detection_boxes"], detections["num_detections"], image_scale,
                                         original_size)
        return {"detection_boxes": boxes, "detection_scores": detections["detection_scores"],
                "detection_classes": detections["detection_classes"],
                "num_detections": detections["num_detections"], "image_scale": image_scale}

    def outputs_in_original_pixels(self, canvas, image_scale, valid_size, original_size, xla=None):
        """``predict_step``'s and the served graph's outputs: ``detections_in_original_pixels``."""
        return self.detections_in_original_pixels(canvas, image_scale, valid_size, original_size, xla=xla)

    # -- training ------------------------------------------------------------------------------------------------
    def _unpack(self, data):
        images, targets = super()._unpack(data)
        if "gt_boxes" not in targets or "gt_classes" not in targets:
            raise ValueError(f"FasterRCNN targets need 'gt_boxes' and 'gt_classes' (or 'boxes' and 'classes' / "
                             f"'labels'); got {sorted(targets)}")
        if "rpn_labels" not in targets and "rpn_sample_indices" not in targets:
            seeds = None
            if self.target_encoder.config.seed is None:
                seeds = self.step_seeds(tf.shape(targets["gt_boxes"])[0], RPN_SAMPLING_STREAM)
            targets = self.rpn.encode_targets(targets, seeds=seeds)
        return images, targets

    def _detector_losses(self, images, targets, training):
        xla = bool(self.jit_compile)
        features = self.rpn.features(images, training=training)
        outputs = self.rpn.head_outputs(features)
        rpn_loss, rpn_terms = self.rpn.rpn_loss_terms(targets, outputs)
        valid_sizes = targets.get("valid_size")
        if valid_sizes is not None:
            valid_sizes = tf.cast(valid_sizes, tf.float32)
        # the train counts in training, the test counts for a validation loss
        proposals = self.rpn.propose({key: tf.stop_gradient(value) for key, value in outputs.items()},
                                     training=training, valid_sizes=valid_sizes, step=True, xla=xla)
        classification_sum, box_sum, num_sampled, num_correct = self.roi_heads.loss_terms(
            features, proposals["boxes"], proposals["num_proposals"], targets["gt_boxes"], targets["gt_classes"],
            self.step_seeds(tf.shape(images)[0], ROI_SAMPLING_STREAM), xla)
        # normalized by the sampled ROIs of the *global* batch, as the RPN's loss (RpnLoss): under tf.distribute the
        # replicas' gradients sum to the single-device ones
        roi_loss = (classification_sum + box_sum) / tf.maximum(global_sum(num_sampled), 1.0)
        loss = self.rpn_loss_weight * rpn_loss + roi_loss
        rpn_objectness, rpn_box, _, _, rpn_count = rpn_terms
        # every tracker is a ratio of sums aggregated over replicas; each replica's loss is its share of the step's
        # loss, so the shares' weights (1 / replicas) sum to one step
        self.trackers["loss"].update_state(loss, 1.0 / replicas_in_sync())
        self.trackers["rpn_loss"].update_state(rpn_objectness + self.rpn.rpn_loss.box_loss_weight * rpn_box,
                                               rpn_count)
        self.trackers["roi_classification_loss"].update_state(classification_sum, num_sampled)
        self.trackers["roi_box_loss"].update_state(box_sum, num_sampled)
        self.trackers["roi_accuracy"].update_state(num_correct, num_sampled)
        return loss

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _logs(self, include_recall=True):  # the signature of RPNModel._logs, for DistributedTrainer
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        images, targets = self._unpack(data)
        with tf.GradientTape() as tape:
            loss = self._detector_losses(images, targets, training=True)
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(scaled_loss, variables), variables)
        return self._logs()

    def test_step(self, data):
        images, targets = self._unpack(data)
        self._detector_losses(images, targets, training=False)
        return self._logs()

    def get_config(self):
        config = super().get_config()
        heads = self.roi_heads.get_config()
        config.update(
            num_classes=self.num_classes, rpn=keras.saving.serialize_keras_object(self.rpn),
            roi_sampler_config=heads["roi_sampler_config"], detection_config=heads["detection_config"],
            roi_strides=heads["roi_strides"], roi_output_size=heads["roi_output_size"],
            sampling_ratio=heads["sampling_ratio"], aligned=heads["aligned"],
            representation_size=heads["representation_size"], num_fc=heads["num_fc"], num_conv=heads["num_conv"],
            conv_channels=heads["conv_channels"], rpn_loss_weight=self.rpn_loss_weight,
            smooth_l1_beta=heads["smooth_l1_beta"], bounding_box_format=self.bounding_box_format, seed=self.seed,
            level_mapper=heads["level_mapper"])
        return config
