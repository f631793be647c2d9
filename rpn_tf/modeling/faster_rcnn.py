"""``FasterRCNN``: an ``RPNModel`` (backbone, anchors + target encoder, RPN head, losses, proposals) plus a second
stage — multi-level ROI Align, ``BoxHead``, ROI sampling and detection post-processing — trained jointly by one
custom ``train_step`` under ``model.fit``.

Shape shorthand: B images, M padded GT boxes, N proposals, R sampled ROIs, K object classes, D detections.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from rpn_tf.config import DetectionConfig, RoiSamplerConfig, config_from_kwargs, config_to_dict
from rpn_tf.modeling.backbones import check_predict_input, feature_list
from rpn_tf.modeling.losses import global_sum
from rpn_tf.modeling.metrics import RatioMean
from rpn_tf.modeling.roi_heads import BoxHead, postprocess_detections, roi_losses
from rpn_tf.modeling.rpn_model import RPNModel
from rpn_tf.ops.box_ops import clip_boxes, convert_boxes
from rpn_tf.ops.matching import valid_gt_mask
from rpn_tf.ops.roi_align import multilevel_roi_align
from rpn_tf.ops.roi_sampling import RoiSampler

DETECTION_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
# keras.utils.bounding_boxes names: "rel_" = coordinates in [0, 1] units of the image (here: the canvas) size.
BOUNDING_BOX_FORMATS = ("yxyx", "xyxy", "xywh", "rel_yxyx", "rel_xyxy", "rel_xywh")


def _replicas_in_sync():
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


@keras.saving.register_keras_serializable(package="rpn_tf")
class FasterRCNN(keras.Model):
    """Faster R-CNN (Ren et al. 2015) on rpn-tf's RPN: ``RPNModel`` → proposals → ROI Align → ``BoxHead``.

    ``call(images)`` takes ``[B, H, W, 3]`` canvas images (0–255) and returns the detections in canvas pixels
    (``DETECTION_OUTPUTS``). ``predict`` takes raw images of any size and returns detections in each image's own
    pixels, as the exported SavedModel does.

    Training data for ``fit`` / ``evaluate``: ``(images, targets)`` with canvas images and targets holding padded
    ``gt_boxes`` ``[B, M, 4]`` and ``gt_classes`` ``[B, M]`` (class ids 1…K, -1 padding) — what
    ``ds.map(model.target_encoder)`` gives — or KerasHub's / Keras's ``{"boxes", "classes"}`` /
    ``{"boxes", "labels"}`` in ``bounding_box_format``. The RPN's labels are computed in the step when the targets
    do not hold them.

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
      bounding_box_format: format of the ``boxes`` of dict targets (``BOUNDING_BOX_FORMATS``; ``gt_boxes`` are
        always yxyx canvas pixels).
      seed: seeds the ROI sampling (``None``: nondeterministic).
    """

    def __init__(self, num_classes, rpn=None, roi_sampler_config=None, detection_config=None, roi_strides=None,
                 roi_output_size=7, sampling_ratio=2, aligned=True, representation_size=1024, num_fc=2, num_conv=0,
                 conv_channels=256, rpn_loss_weight=1.0, smooth_l1_beta=1.0 / 9.0, bounding_box_format="yxyx",
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(rpn, dict):
            rpn = keras.saving.deserialize_keras_object(rpn) if "class_name" in rpn else RPNModel(**rpn)
        self.rpn = rpn if rpn is not None else RPNModel()
        if not isinstance(self.rpn, RPNModel):
            raise TypeError(f"rpn must be an RPNModel or a dict of its arguments, got {type(rpn).__name__}")
        self.roi_sampler_config = config_from_kwargs(RoiSamplerConfig, roi_sampler_config)
        self.roi_sampler = RoiSampler(dataclasses.replace(self.roi_sampler_config, seed=0))  # seeds come from here
        self.detection_config = config_from_kwargs(DetectionConfig, detection_config)
        strides = tuple(self.rpn.backbone_strides)
        if roi_strides is None:
            roi_strides = tuple(s for s in strides if s <= 32) or strides[:1] if len(strides) > 1 else strides
        self.roi_strides = tuple(int(s) for s in roi_strides)
        missing = [s for s in self.roi_strides if s not in strides]
        if missing:
            raise ValueError(f"roi_strides {self.roi_strides} are not all among the backbone's strides {strides}")
        self.roi_output_size, self.sampling_ratio, self.aligned = int(roi_output_size), int(sampling_ratio), \
            bool(aligned)
        if bounding_box_format not in BOUNDING_BOX_FORMATS:
            raise ValueError(f"bounding_box_format must be one of {BOUNDING_BOX_FORMATS}, got {bounding_box_format!r}")
        self.bounding_box_format = bounding_box_format
        self.rpn_loss_weight, self.smooth_l1_beta = float(rpn_loss_weight), float(smooth_l1_beta)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="roi_sampling_seed")
        self.box_head = BoxHead(num_classes, representation_size, num_fc, num_conv, conv_channels, name="box_head")
        channels = int(feature_list(self.rpn.backbone.output)[0].shape[-1])
        self.box_head.build((None, None, self.roi_output_size, self.roi_output_size, channels))
        self.trackers = {name: RatioMean(name=name) for name in (
            "loss", "rpn_loss", "roi_classification_loss", "roi_box_loss", "roi_accuracy")}
        self.built = True

    # -- the parts -----------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.box_head.num_classes

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

    def _roi_features(self, features, rois):
        selected = [feature for feature, stride in zip(features, self.rpn.backbone_strides)
                    if stride in self.roi_strides]
        return multilevel_roi_align(selected, self.roi_strides, tf.stop_gradient(rois), self.roi_output_size,
                                    self.sampling_ratio, self.aligned)

    def _nms(self, setting):
        return ("padded" if self.jit_compile else "combined") if setting == "auto" else setting

    def _proposal_config(self):
        """The RPN's proposal settings, its ``nms="auto"`` resolved by *this* model's compilation (XLA or not)."""
        return self.rpn.proposal_generator.resolved(xla=bool(self.jit_compile))

    # -- inference -----------------------------------------------------------------------------------------------
    def detect(self, images, valid_sizes=None, training=False):
        """Detections of canvas images in canvas pixels, plus the proposals (``proposal_boxes``,
        ``num_proposals``)."""
        features = self.rpn.features(images, training=training)
        outputs = self.rpn.head_outputs(features)
        if valid_sizes is None:
            valid_sizes = tf.tile(tf.constant([self.image_size], tf.float32), [tf.shape(images)[0], 1])
        proposals = self.rpn.propose(outputs, training=False, proposal_config=self._proposal_config(),
                                     valid_sizes=valid_sizes)
        logits, deltas = self.box_head(self._roi_features(features, proposals["boxes"]))
        detections = postprocess_detections(proposals["boxes"], proposals["num_proposals"], logits, deltas,
                                            self.roi_sampler_config.box_coder, valid_sizes, self.detection_config,
                                            self._nms(self.detection_config.nms))
        return {**detections, "proposal_boxes": proposals["boxes"], "num_proposals": proposals["num_proposals"]}

    def call(self, images, training=None):
        detections = self.detect(images, training=bool(training))
        return {key: detections[key] for key in DETECTION_OUTPUTS}

    def detections_in_original_pixels(self, canvas, image_scale, valid_size, original_size):
        """Detections of canvas images mapped back to each original image's pixels (clipped to it); the inputs are
        ``to_canvas``'s outputs. ``num_detections`` is float32, as in the TF Object Detection API."""
        detections = self.detect(canvas, valid_sizes=valid_size)
        boxes = detections["detection_boxes"] / tf.concat([image_scale, image_scale], axis=1)[:, None, :]
        boxes = clip_boxes(boxes, original_size)
        found = tf.range(tf.shape(boxes)[1])[None, :] < detections["num_detections"][:, None]
        return {"detection_boxes": tf.where(found[..., None], boxes, 0.0),
                "detection_scores": detections["detection_scores"],
                "detection_classes": detections["detection_classes"],
                "num_detections": tf.cast(detections["num_detections"], tf.float32), "image_scale": image_scale}

    def predict(self, x, *args, **kwargs):
        """``keras.Model.predict`` on raw images ``[B, H0, W0, 3]``; a wrong rank or channel count is named before
        anything runs."""
        check_predict_input(x)
        return super().predict(x, *args, **kwargs)

    def predict_step(self, data):
        """Raw images ``[B, H0, W0, 3]`` of any size (or ``{"image": ...}``) → detections in their own pixels."""
        images = data[0] if isinstance(data, (tuple, list)) else data
        if isinstance(images, dict):
            images = images["image"]
        return self.detections_in_original_pixels(*self.to_canvas(images))

    # -- training ------------------------------------------------------------------------------------------------
    def _unpack(self, data):
        if not isinstance(data, (tuple, list)) or len(data) < 2 or not isinstance(data[1], dict):
            raise ValueError("FasterRCNN expects (images, targets) with targets a dict holding padded 'gt_boxes' and "
                             "'gt_classes' (ds.map(model.target_encoder)), or {'boxes', 'classes' | 'labels'}")
        images, targets = data[0], dict(data[1])
        if isinstance(images, dict):
            images = images["image"]
        if images.dtype.is_floating:  # NaN pixels would give NaN losses, and NaN proposals further on
            images = tf.debugging.assert_all_finite(images, "FasterRCNN: the images contain NaN or Inf values")
        if "gt_boxes" not in targets and "boxes" in targets:
            classes = targets.get("classes", targets.get("labels"))
            if classes is None:
                raise ValueError("dict targets with 'boxes' need 'classes' or 'labels'")
            classes = tf.cast(classes, tf.int32)
            fmt = self.bounding_box_format
            boxes = convert_boxes(tf.cast(targets["boxes"], tf.float32), fmt.replace("rel_", ""), "yxyx",
                                  image_size=self.image_size, source_normalized=fmt.startswith("rel_"))
            targets["gt_boxes"] = tf.where((classes >= 0)[..., None], boxes, -1.0)
            targets["gt_classes"] = classes
        if "gt_boxes" not in targets or "gt_classes" not in targets:
            raise ValueError(f"FasterRCNN targets need 'gt_boxes' and 'gt_classes'; got {sorted(targets)}")
        targets["gt_classes"] = tf.cast(targets["gt_classes"], tf.int32)
        classes = tf.reshape(targets["gt_classes"], [-1])
        too_high = tf.debugging.assert_less_equal(
            tf.reduce_max(tf.concat([classes, [-1]], 0)), self.num_classes,
            message=f"gt_classes hold a class id above num_classes={self.num_classes} (ids are 1..num_classes)")
        # a real box of class 0 would train as background: 0-based ids (KerasHub's) need + 1
        real = tf.reshape(valid_gt_mask(tf.cast(targets["gt_boxes"], tf.float32)), [-1])
        too_low = tf.debugging.assert_greater_equal(
            tf.reduce_min(tf.concat([tf.where(real, classes, 1), [1]], 0)), 1,
            message="gt_classes hold a class id below 1 for a real box: object classes are 1..num_classes (0 is "
                    "background, -1 padding); shift 0-based class ids by + 1")
        with tf.control_dependencies([too_high, too_low]):
            targets["gt_classes"] = tf.identity(targets["gt_classes"])
        if "rpn_labels" not in targets and "rpn_sample_indices" not in targets:
            targets = self.rpn.encode_targets(targets)
        return images, targets

    def _detector_losses(self, images, targets, training):
        features = self.rpn.features(images, training=training)
        outputs = self.rpn.head_outputs(features)
        rpn_loss, rpn_terms = self.rpn.rpn_loss_terms(targets, outputs)
        valid_sizes = targets.get("valid_size")
        if valid_sizes is not None:
            valid_sizes = tf.cast(valid_sizes, tf.float32)
        proposals = self.rpn.propose({key: tf.stop_gradient(value) for key, value in outputs.items()},
                                     training=True, proposal_config=self._proposal_config(), valid_sizes=valid_sizes)
        samples = self.roi_sampler(proposals["boxes"], targets["gt_boxes"], targets["gt_classes"],
                                   proposals["num_proposals"], seeds=self._sampling_seeds(tf.shape(images)[0]))
        logits, deltas = self.box_head(self._roi_features(features, samples["rois"]))
        classification_sum, box_sum, num_sampled, num_correct = roi_losses(
            logits, deltas, samples["roi_classes"], samples["roi_deltas"], self.smooth_l1_beta)
        # normalized by the sampled ROIs of the *global* batch, as the RPN's loss (RpnLoss): under tf.distribute the
        # replicas' gradients sum to the single-device ones
        roi_loss = (classification_sum + box_sum) / tf.maximum(global_sum(num_sampled), 1.0)
        loss = self.rpn_loss_weight * rpn_loss + roi_loss
        rpn_objectness, rpn_box, _, _, rpn_count = rpn_terms
        # every tracker is a ratio of sums aggregated over replicas; each replica's loss is its share of the step's
        # loss, so the shares' weights (1 / replicas) sum to one step
        self.trackers["loss"].update_state(loss, 1.0 / _replicas_in_sync())
        self.trackers["rpn_loss"].update_state(rpn_objectness + self.rpn.rpn_loss.box_loss_weight * rpn_box,
                                               rpn_count)
        self.trackers["roi_classification_loss"].update_state(classification_sum, num_sampled)
        self.trackers["roi_box_loss"].update_state(box_sum, num_sampled)
        self.trackers["roi_accuracy"].update_state(num_correct, num_sampled)
        return loss

    def _sampling_seeds(self, batch):
        """int64 ``[B, 2]`` ROI-sampling seeds: one draw of the model's ``SeedGenerator`` per step, with the replica's
        id folded in, so that replicas of a ``tf.distribute`` step sample differently."""
        context = tf.distribute.get_replica_context()
        replica = tf.cast(context.replica_id_in_sync_group, tf.int32) if context is not None else 0
        base = tf.cast(self.seed_generator.next(), tf.int32) + tf.stack([0, replica])
        return tf.cast(tf.random.stateless_uniform([batch, 2], base, maxval=2 ** 31 - 1, dtype=tf.int32), tf.int64)

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

    def fit(self, x=None, y=None, *args, shuffle=None, **kwargs):
        """``keras.Model.fit`` (``shuffle`` defaults to ``False`` for a ``tf.data.Dataset``, as ``RPNModel.fit``)."""
        if shuffle is None:
            shuffle = not isinstance(x, tf.data.Dataset)
        return super().fit(x, y, *args, shuffle=shuffle, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes, rpn=keras.saving.serialize_keras_object(self.rpn),
            roi_sampler_config=config_to_dict(self.roi_sampler_config),
            detection_config=config_to_dict(self.detection_config), roi_strides=list(self.roi_strides),
            roi_output_size=self.roi_output_size, sampling_ratio=self.sampling_ratio, aligned=self.aligned,
            representation_size=self.box_head.representation_size, num_fc=self.box_head.num_fc,
            num_conv=self.box_head.num_conv, conv_channels=self.box_head.conv_channels,
            rpn_loss_weight=self.rpn_loss_weight, smooth_l1_beta=self.smooth_l1_beta,
            bounding_box_format=self.bounding_box_format, seed=self.seed)
        return config
