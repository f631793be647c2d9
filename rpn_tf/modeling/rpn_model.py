"""``RPNModel``: backbone + ``RpnHead``, trained with ``model.fit``; wiring and the train / test / predict steps.

Shape shorthand: B images, H × W input, Hf × Wf feature map, K anchors per location, A = Hf·Wf·K, M padded GT.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from rpn_tf.config import DEFAULT_IMAGE_SIZE, ProposalConfig, anchor_config_to_dict, canvas_varies, \
    config_from_kwargs, config_to_dict, inference_canvas
from rpn_tf.data.resize import resize_to_canvas, trim_canvas
from rpn_tf.modeling.backbones import check_input_size, check_raw_images, feature_list
from rpn_tf.modeling.base import HARD_MINING_STREAM, RPN_SAMPLING_STREAM, DetectionModel, boxes_in_original_pixels
from rpn_tf.modeling.losses import decoded_iou
from rpn_tf.modeling.metrics import ProposalRecall, RatioMean
from rpn_tf.modeling.proposal_generator import ProposalGenerator
from rpn_tf.modeling.rpn_parts import assemble_parts, build_rpn_parts, check_parts, deserialize_parts
from rpn_tf.ops.box_ops import parse_bounding_box_format

TARGET_KEYS = ("rpn_labels", "rpn_deltas")
SPARSE_TARGET_KEYS = ("rpn_sample_indices", "rpn_sample_labels", "rpn_sample_deltas")


@keras.saving.register_keras_serializable(package="rpn_tf")
class RPNModel(DetectionModel):
    """Region Proposal Network: backbone → ``RpnHead`` (3×3 conv, sibling 1×1 convs), outputs in the encoder's
    anchor order. With a pyramid backbone (FPN) one head is shared by every level (the FPN paper) and the levels'
    outputs are concatenated in anchor order (level, row, column, anchor).

    ``call(images)`` takes ``[B, H, W, 3]`` canvas images with 0–255 values (any dtype; the backbone's
    preprocessing is inside) and returns ``{"objectness_logits": [B, A], "box_deltas": [B, A, 4]}`` in float32.
    ``predict`` takes *raw* images of any size (``[B, H0, W0, 3]``, one size per batch), resizes them by the
    ``resize`` policy and returns proposals in each image's own pixels, as the exported SavedModel does.

    Training data for ``fit`` / ``evaluate``: ``(images, targets)`` where ``targets`` holds either
    ``rpn_labels`` and ``rpn_deltas`` (from ``ds.map(RpnTargetEncoder(...))``), or only padded ``gt_boxes``
    ``[B, M, 4]`` yxyx canvas pixels (or ``boxes`` in ``bounding_box_format``, KerasHub's convention) — then
    ``train_step`` labels the batch itself with ``self.target_encoder`` (on the accelerator). Batches are read and
    checked on the host before the step (``check_batch``: ``modeling/inputs.py``), so the checks hold under XLA.
    ``evaluate`` also reports proposal recall when ``gt_boxes`` are present. With ``compile(jit_compile=True)``
    every step (``fit``, ``evaluate``, ``predict``) compiles whole under XLA; training and evaluation steps use the
    padded NMS (every op has a GPU kernel) whether compiled or not.

    The model is an assembly of standalone parts (``rpn_tf.modeling.rpn_parts``: ``preprocessing``, ``backbone``,
    ``target_encoder`` — anchors and targets —, ``head``, ``rpn_loss``, ``proposal_generator``), built here from
    the arguments below and checked against each other once; ``RPNModel.from_parts`` assembles parts of your own.

    Args:
      image_size: ``(height, width)`` of the network's input canvas.
      anchor_config: ``AnchorConfig`` (default for one feature map: the article's) or ``MultiLevelAnchorConfig``
        (default for a pyramid: ``MultiLevelAnchorConfig.fpn`` at the backbone's strides, 32–512 px).
      backbone: ``"vgg16"`` (default), ``"resnet50"``, ``"mobilenet_v2"``, ``"simple"``, the pyramids
        ``"resnet50_fpn"``, ``"mobilenet_v2_fpn"``, ``"simple_fpn"``, or a ``keras.Model`` (one map, or a dict /
        list of maps).
      backbone_stride: required for a user backbone with one output map.
      weights: ``None``, ``"imagenet"`` or a weights-file path (built-in ``keras.applications`` backbones).
      freeze_backbone_layers: the first N backbone layers are not trained.
      preprocessing: override of the backbone's input preprocessing (``"caffe"``, ``"tf"``, ``"unit"``,
        ``"none"``).
      head_channels: channels of the 3×3 conv; default 512 (the article's) for one feature map, the pyramid's
        channels for several (detectron2's ``StandardRPNHead``).
      box_loss_weight: weight of the box loss in ``loss`` (1).
      smooth_l1_beta: smooth-L1 transition point (1/9).
      target_encoder_config: ``TargetConfig`` (or a dict of its fields, ``delta_weights`` accepted) for the
        model's ``RpnTargetEncoder``; its ``box_coder`` also decodes the predictions into proposals.
      proposal_config: ``ProposalConfig`` (or a dict) for ``predict_step`` and recall; default the article's for
        one feature map, ``ProposalConfig.fpn()`` (detectron2's per-level counts) for a pyramid.
      recall_top_n: N of the recall metric (300).
      resize: ``ResizeConfig`` or a policy name (``"letterbox"`` default, ``"stretch"``, ``"shorter_side"``): how
        ``target_encoder`` and ``predict`` put images of any size on the canvas.
      objectness_loss: ``"bce"`` (default: binary cross-entropy over the sampled anchors, normalized by their
        count) or ``"focal"`` (RetinaNet's focal loss, ``focal_gamma`` 2, ``focal_alpha`` 0.25, normalized by the
        number of positives; meant for targets with ``TargetConfig(sampling="none")``: every labeled anchor).
      negative_sampling: ``"random"`` (default: the targets' sample) or ``"hard"`` (OHEM-style, in the train step:
        positives at random, negatives the highest-scored ones, ``samples_per_image`` in all; needs targets with
        ``sampling="none"``, which the model's encoder then uses).
      objectness_target: ``"binary"`` (default: the article's 1 for positives, 0 for negatives) or ``"iou"``:
        a positive's target is the IoU of its decoded predicted box with its GT box (no gradient through it), so
        scores rank boxes by how well they fit (IoU-aware objectness; ``docs/recipes.md``).
      freeze_batch_norm: the backbone's batch norm layers in inference mode with fixed statistics and affine
        parameters (torchvision's ``FrozenBatchNorm2d``, detectron2's ``FrozenBN``): with 2–8 images per batch,
        batch statistics would overwrite the pretrained ones. Default ``None``: frozen when ``weights`` are loaded,
        trained from scratch otherwise (torchvision's builders do the same).
      parts: ``RpnParts`` (or their serialized form) instead of the arguments above: ``from_parts`` passes them.
      bounding_box_format: format of targets' ``boxes`` (``BOUNDING_BOX_FORMATS``; ``rel_*`` in units of the canvas);
        ``gt_boxes`` are always yxyx canvas pixels.
      seed: seeds the anchor sampling done in the step (targets given as ``gt_boxes``) and hard-negative mining;
        ``None``: drawn from the global seed (``keras.utils.set_random_seed``), so a seeded program repeats.
    """

    def __init__(self, image_size=DEFAULT_IMAGE_SIZE, anchor_config=None, backbone="vgg16", backbone_stride=None,
                 weights=None, freeze_backbone_layers=0, preprocessing=None, head_channels=None,
                 box_loss_weight=1.0, smooth_l1_beta=1.0 / 9.0, target_encoder_config=None, proposal_config=None,
                 recall_top_n=300, resize=None, objectness_loss="bce", focal_gamma=2.0, focal_alpha=0.25,
                 negative_sampling="random", objectness_target="binary", parts=None, freeze_batch_norm=None,
                 bounding_box_format="yxyx", seed=None, **kwargs):
        super().__init__(**kwargs)
        parse_bounding_box_format(bounding_box_format)  # a ValueError naming the choices
        self.bounding_box_format, self.seed = bounding_box_format, seed
        self.seed_generator = self._make_seed_generator(seed, "rpn_sampling_seed")
        if parts is None:
            if freeze_batch_norm is None:
                freeze_batch_norm = weights is not None
            parts = build_rpn_parts(image_size, anchor_config, backbone, backbone_stride, weights,
                                    freeze_backbone_layers, preprocessing, head_channels, box_loss_weight,
                                    smooth_l1_beta, target_encoder_config, proposal_config, resize, objectness_loss,
                                    focal_gamma, focal_alpha, negative_sampling, objectness_target,
                                    bool(freeze_batch_norm))
            self.backbone_name = backbone if isinstance(backbone, str) else None
            self._from_parts = False
        else:  # from_parts, or a from_parts model's config
            if freeze_backbone_layers or freeze_batch_norm:
                raise ValueError("freeze_backbone_layers / freeze_batch_norm apply to a backbone built from "
                                 "arguments; with parts, freeze your backbone's layers yourself "
                                 "(rpn_tf.modeling.backbones.freeze_batch_norm(backbone))")
            if isinstance(parts, dict):
                parts = assemble_parts(**deserialize_parts(parts))
            self.backbone_name, self._from_parts = None, True
        self.freeze_backbone_layers = int(freeze_backbone_layers)
        self.freeze_batch_norm = bool(freeze_batch_norm)
        self.recall_top_n = int(recall_top_n)
        self._assemble(parts)

    @classmethod
    def from_parts(cls, backbone, target_encoder, head=None, loss=None, proposal_generator=None, preprocessing=None,
                   recall_top_n=300, bounding_box_format="yxyx", seed=None, **kwargs):
        """An RPN assembled from parts of your own (``rpn_tf.modeling.rpn_parts``): a ``keras.Model`` backbone
        (one map or a list / dict of maps), an ``RpnTargetEncoder`` (canvas size, anchors, targets), and optionally
        an ``RpnHead`` (default the article's), an ``RpnLoss`` (default BCE + smooth-L1), a ``ProposalGenerator``
        (default on the encoder's anchors and box coder: the article's settings for one level,
        ``ProposalConfig.fpn()`` for several) and an ``ImagePreprocessing`` (default
        ``"none"``: the backbone takes 0–255 pixels). The parts are checked against each other once
        (``check_parts``); the model saves and loads as any ``RPNModel`` (its config holds each part's)."""
        return cls(image_size=None, parts=assemble_parts(backbone, target_encoder, head, loss, proposal_generator,
                                                         preprocessing), recall_top_n=recall_top_n,
                   bounding_box_format=bounding_box_format, seed=seed, **kwargs)

    @classmethod
    def from_torchvision(cls, source, batch_norm_epsilon="auto", trainable_backbone_layers=3, **kwargs):
        """torchvision's RPN (``fasterrcnn_resnet50_fpn``'s ResNet-50-FPN backbone and RPN head) with the weights of
        ``source`` (``FasterRCNN.from_torchvision``'s sources; second-stage weights are not used): COCO-pretrained
        proposals for any second stage. ``**kwargs``: ``from_parts``' (``seed``, ``recall_top_n``…)."""
        from rpn_tf.interop.torchvision import rpn_from_torchvision

        return rpn_from_torchvision(source, batch_norm_epsilon, trainable_backbone_layers, **kwargs)

    def _assemble(self, parts):
        check_parts(parts)
        self._parts = parts
        self.image_size = parts.image_size
        self.preprocessing, self.backbone, self.head = parts.preprocessing, parts.backbone, parts.head
        self.target_encoder, self.rpn_loss = parts.target_encoder, parts.loss
        self.proposal_generator = parts.proposal_generator
        self.backbone_strides = tuple(parts.backbone_strides)
        self.resize = self.target_encoder.resize
        self.anchor_config = self.target_encoder.anchor_config
        self.level_sizes = self.proposal_generator.level_sizes
        self.num_anchors = self.target_encoder.num_anchors
        # tf.image.combined_non_max_suppression has no XLA kernel: with nms="combined" Keras runs the steps without
        # XLA (jit_compile=True then warns and falls back).
        self.supports_jit = self.proposal_config.nms != "combined"
        self.loss_tracker = RatioMean(name="loss")
        self.objectness_loss_tracker = RatioMean(name="rpn_objectness_loss")
        self.box_loss_tracker = RatioMean(name="rpn_box_loss")
        self.accuracy_tracker = RatioMean(name="rpn_objectness_accuracy")
        self.recall_metric = ProposalRecall(self.recall_top_n, name="proposal_recall")
        # Built at construction (shapes are static), so load_weights works on a fresh model.
        self.build()

    @property
    def parts(self):
        """The ``RpnParts`` this model assembles (preprocessing, backbone, target encoder, head, loss, proposal
        generator)."""
        return self._parts

    @property
    def proposal_config(self):
        """The proposal generator's ``ProposalConfig`` (``predict``, recall, export); assigning one (or a dict of its
        fields) replaces the generator by one with the same anchors and box coder."""
        return self.proposal_generator.config

    @proposal_config.setter
    def proposal_config(self, config):
        generator = self.proposal_generator
        self.proposal_generator = ProposalGenerator(generator.image_size, generator.anchor_config,
                                                    config_from_kwargs(ProposalConfig, config), generator.box_coder)
        self._parts = dataclasses.replace(self._parts, proposal_generator=self.proposal_generator)
        self.supports_jit = self.proposal_config.nms != "combined"

    @property
    def backbone_stride(self) -> int:
        """The stride of a single-level backbone (the finest level's for a pyramid)."""
        return self.backbone_strides[0]

    def build(self, input_shape=None):
        """Builds every layer from the static input size (``input_shape`` is implied by ``image_size``)."""
        if not self.preprocessing.built:  # parts deserialized from a config arrive built
            self.preprocessing.build((None, *self.image_size, 3))
        if not self.head.built:
            self.head.build(tuple(feature_list(self.backbone.output)[0].shape))
        self.built = True

    @property
    def head_channels(self) -> int:
        return self.head.channels

    @property
    def anchors(self):
        """float32 ``Tensor[A, 4]``: the anchors, in the order of the outputs."""
        return self.target_encoder.anchors

    def call(self, images, training=None):
        return self.head_outputs(self.features(images, training=training))

    @property
    def canvas_varies(self) -> bool:
        """Whether ``predict`` and the served graph put each batch on a canvas of its own size (the
        ``"torchvision"`` resize policy; the backbone takes any size) rather than on ``image_size``."""
        return canvas_varies(self.resize)

    def features(self, images, training=None, any_canvas=False):
        """The backbone's feature maps of ``[B, H, W, 3]`` canvas images (0–255), finest first (a second stage reads
        them: ``FasterRCNN``). The canvas is ``image_size`` (checked), or — ``any_canvas``, for inference when
        ``canvas_varies`` — the batch's own."""
        if not (any_canvas and self.canvas_varies):
            images = check_input_size(images, self.image_size)
        return feature_list(self.backbone(self.preprocessing(images), training=training))

    def head_outputs(self, features):
        """``call``'s outputs from the backbone's maps (``features``)."""
        outputs = [self.head(feature) for feature in features]  # one shared head, level by level
        logits = keras.ops.concatenate([logits for logits, _ in outputs], axis=1)
        deltas = keras.ops.concatenate([deltas for _, deltas in outputs], axis=1)
        return {"objectness_logits": keras.ops.cast(logits, "float32"),
                "box_deltas": keras.ops.cast(deltas, "float32")}

    @property
    def metrics(self):
        return [self.loss_tracker, self.objectness_loss_tracker, self.box_loss_tracker, self.accuracy_tracker,
                self.recall_metric]

    def _unpack(self, data):
        """``(images, targets)`` of a step: targets read once (``DetectionModel._unpack``: ``gt_boxes`` yxyx canvas
        pixels) and the RPN's labels computed in the step when the targets do not hold them."""
        images, targets = super()._unpack(data)
        if not all(key in targets for key in TARGET_KEYS) and not all(key in targets for key in SPARSE_TARGET_KEYS):
            if "gt_boxes" not in targets:
                raise ValueError(f"targets need {TARGET_KEYS}, 'gt_boxes' or 'boxes'; got {sorted(targets)}")
            targets = self.encode_targets(targets)
        return images, targets

    def encode_targets(self, targets, seeds=None):
        """``targets`` (padded ``gt_boxes`` ``[B, M, 4]`` yxyx canvas pixels, optional ``valid_size``) plus the RPN's
        labels and deltas, computed in the step (on the accelerator) by the same ops as the ``tf.data`` path, batched.
        ``seeds`` (int64 ``[B, 2]``) default: the model's seed generator in a step, unless ``TargetConfig.seed``
        fixes the sample (content seeds)."""
        gt_boxes = targets["gt_boxes"]
        if seeds is None and self.target_encoder.config.seed is None:
            seeds = self.step_seeds(tf.shape(gt_boxes)[0], RPN_SAMPLING_STREAM)
        # gt_boxes were checked at the input boundary (check_batch); the encoder does not check them again
        return {**targets, **self.target_encoder.encode(gt_boxes, seeds=seeds, valid_sizes=targets.get("valid_size"),
                                                        validate=False)}

    def _rpn_losses(self, targets, outputs):
        loss, (objectness_sum, box_sum, num_sampled, num_correct, count) = self.rpn_loss_terms(targets, outputs)
        self.loss_tracker.update_state(objectness_sum + self.rpn_loss.box_loss_weight * box_sum, count)
        self.objectness_loss_tracker.update_state(objectness_sum, count)
        self.box_loss_tracker.update_state(box_sum, count)
        self.accuracy_tracker.update_state(num_correct, num_sampled)
        return loss

    def rpn_loss_terms(self, targets, outputs):
        """``(loss, (objectness_sum, box_sum, num_sampled, num_correct, count))`` of ``call``'s outputs against the
        encoded ``targets`` (dense or sparse), without touching this model's metrics."""
        logits, box_deltas = outputs["objectness_logits"], outputs["box_deltas"]
        indices = None
        if "rpn_labels" in targets:
            labels, deltas = targets["rpn_labels"], targets["rpn_deltas"]
        else:  # sparse targets: the predictions at the sampled anchors (padding entries have label -1)
            indices = tf.maximum(tf.cast(targets["rpn_sample_indices"], tf.int32), 0)
            logits = tf.gather(logits, indices, batch_dims=1)
            box_deltas = tf.gather(box_deltas, indices, batch_dims=1)
            labels, deltas = targets["rpn_sample_labels"], targets["rpn_sample_deltas"]
        positive_targets = None
        if self.rpn_loss.objectness_target == "iou":
            anchors = self.anchors[None] if indices is None else tf.gather(self.anchors, indices)
            positive_targets = decoded_iou(box_deltas, deltas, anchors, self.target_encoder.box_coder)
        seeds = None
        if self.rpn_loss.negative_sampling == "hard":
            seeds = self.step_seeds(tf.shape(labels)[0], HARD_MINING_STREAM)
        return self.rpn_loss(labels, deltas, logits, box_deltas, positive_targets, seeds=seeds)

    def _logs(self, include_recall=True):
        logs = {}
        for metric in self.metrics:
            if metric is self.recall_metric and not include_recall:
                continue
            result = metric.result()
            logs.update(result if isinstance(result, dict) else {metric.name: result})
        return logs

    def train_step(self, data):
        images, targets = self._unpack(data)
        with tf.GradientTape() as tape:
            outputs = self(images, training=True)
            loss = self._rpn_losses(targets, outputs)
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply(gradients, variables)
        return self._logs(include_recall=False)

    def test_step(self, data):
        images, targets = self._unpack(data)
        outputs = self(images, training=False)
        self._rpn_losses(targets, outputs)
        if "gt_boxes" in targets:
            proposals = self.propose(outputs, training=False, valid_sizes=targets.get("valid_size"), step=True)
            self.recall_metric.update_state(targets["gt_boxes"], proposals["boxes"], proposals["num_proposals"])
        return self._logs()

    def propose(self, outputs, training=False, proposal_config=None, valid_sizes=None, step=False, xla=None,
                features=None, canvas=None):
        """Proposals (``generate_proposals``) from ``call``'s outputs, decoded with the targets' ``BoxCoder``, in
        canvas pixels, clipped to ``valid_sizes`` (``[B, 2]``, each image's unpadded part) when given.

        ``nms="auto"`` resolves to the padded NMS in a training or evaluation ``step`` (every op of a step has a GPU
        kernel) and when ``xla`` (default: this model's ``jit_compile``); to combined NMS otherwise (inference on a
        CPU, the served graph). ``features`` and ``canvas`` (the maps and images the outputs come from) place the
        anchors on a canvas other than ``image_size`` (``canvas_varies``).
        """
        xla = bool(self.jit_compile) if xla is None else bool(xla)
        sizes = {}
        if canvas is not None and features is not None and tuple(canvas.shape[1:3]) != tuple(self.image_size):
            sizes = {"canvas_size": tf.shape(canvas)[1:3], "map_sizes": [tf.shape(f)[1:3] for f in features]}
        return self.proposal_generator(outputs["objectness_logits"], outputs["box_deltas"], training=training,
                                       valid_sizes=valid_sizes, config=proposal_config, xla=xla or step, **sizes)

    def to_canvas(self, images):
        """Raw images ``[B, H0, W0, 3]`` (one size) → ``(canvas [B, H, W, 3], image_scale [B, 2], valid_size [B, 2],
        original_size [B, 2])`` by the ``resize`` policy (the encoder's function)."""
        images = check_raw_images(images)
        canvas, scale, valid_size = resize_to_canvas(images, inference_canvas(self.resize, self.image_size),
                                                     self.resize)
        if self.canvas_varies:  # the batch's own canvas: its size rounded up to size_divisible
            canvas = trim_canvas(canvas, valid_size[None], self.resize.size_divisible)
        batch = tf.shape(images)[:1]
        original_size = tf.cast(tf.shape(images)[1:3], tf.float32)
        return (canvas, tf.tile(scale[None], tf.concat([batch, [1]], 0)),
                tf.tile(tf.cast(valid_size, tf.float32)[None], tf.concat([batch, [1]], 0)),
                tf.tile(original_size[None], tf.concat([batch, [1]], 0)))

    def proposals_in_original_pixels(self, canvas, image_scale, valid_size, original_size, proposal_config=None,
                                     xla=None):
        """Proposals of canvas images mapped back to each original image's pixels (clipped to it).

        Args: ``canvas`` ``[B, H, W, 3]``; float32 ``[B, 2]`` ``image_scale``, ``valid_size``, ``original_size``;
        ``proposal_config`` overrides the model's (e.g. more proposals for an evaluation); ``xla``: resolves
        ``nms="auto"`` (default: this model's ``jit_compile``; an export passes its own choice).

        Returns:
          dict: ``proposal_boxes`` ``[B, N, 4]`` yxyx original pixels (zeros past ``num_proposals``),
          ``proposal_scores`` ``[B, N]``, ``num_proposals`` ``[B]``, ``image_scale`` ``[B, 2]`` and the network's
          ``objectness_logits`` / ``box_deltas``.
        """
        features = self.features(canvas, training=False, any_canvas=True)
        outputs = self.head_outputs(features)
        proposals = self.propose(outputs, training=False, proposal_config=proposal_config, valid_sizes=valid_size,
                                 xla=xla, features=features, canvas=canvas)
        boxes = boxes_in_original_pixels(proposals["boxes"], proposals["num_proposals"], image_scale, original_size)
        return {"proposal_boxes": boxes, "proposal_scores": proposals["scores"],
                "num_proposals": proposals["num_proposals"], "image_scale": image_scale, **outputs}

    def outputs_in_original_pixels(self, canvas, image_scale, valid_size, original_size, xla=None):
        """``predict_step``'s and the served graph's outputs: ``proposals_in_original_pixels``."""
        return self.proposals_in_original_pixels(canvas, image_scale, valid_size, original_size, xla=xla)

    def get_config(self):
        config = super().get_config()
        if self._from_parts:  # each part's own config
            config.update(image_size=None, parts=self._parts.serialized(), recall_top_n=self.recall_top_n,
                          bounding_box_format=self.bounding_box_format, seed=self.seed)
            return config
        backbone = self.backbone_name or keras.saving.serialize_keras_object(self.backbone)
        config.update(
            image_size=list(self.image_size), anchor_config=anchor_config_to_dict(self.anchor_config),
            backbone=backbone, backbone_stride=self.backbone_stride if len(self.backbone_strides) == 1 else None,
            weights=None, resize=config_to_dict(self.resize),
            freeze_backbone_layers=self.freeze_backbone_layers, preprocessing=self.preprocessing.mode,
            head_channels=self.head_channels, box_loss_weight=self.rpn_loss.box_loss_weight,
            smooth_l1_beta=self.rpn_loss.smooth_l1_beta,
            target_encoder_config=config_to_dict(self.target_encoder.config),
            proposal_config=config_to_dict(self.proposal_config), recall_top_n=self.recall_top_n,
            objectness_loss=self.rpn_loss.objectness_loss, focal_gamma=self.rpn_loss.focal_gamma,
            focal_alpha=self.rpn_loss.focal_alpha, negative_sampling=self.rpn_loss.negative_sampling,
            objectness_target=self.rpn_loss.objectness_target, freeze_batch_norm=self.freeze_batch_norm,
            bounding_box_format=self.bounding_box_format, seed=self.seed)
        return config
