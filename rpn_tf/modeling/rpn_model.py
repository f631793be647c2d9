"""``RPNModel``: backbone + ``RpnHead``, trained with ``model.fit``; wiring and the train / test / predict steps.

Shape shorthand: B images, H × W input, Hf × Wf feature map, K anchors per location, A = Hf·Wf·K, M padded GT.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from rpn_tf.config import DEFAULT_IMAGE_SIZE, AnchorConfig, ProposalConfig, TargetConfig, config_from_kwargs, \
    config_to_dict, validate_image_size
from rpn_tf.data.encoder import RpnTargetEncoder
from rpn_tf.modeling.backbones import ImagePreprocessing, build_backbone
from rpn_tf.modeling.head import RpnHead
from rpn_tf.modeling.losses import global_sum, rpn_loss_sums
from rpn_tf.modeling.metrics import ProposalRecall, RatioMean
from rpn_tf.ops.proposals import generate_proposals

TARGET_KEYS = ("rpn_labels", "rpn_deltas")


@keras.saving.register_keras_serializable(package="rpn_tf")
class RPNModel(keras.Model):
    """Region Proposal Network: backbone → ``RpnHead`` (3×3 conv, sibling 1×1 convs), outputs in the encoder's
    anchor order.

    ``call(images)`` takes ``[B, H, W, 3]`` images with 0–255 values (any dtype; the backbone's preprocessing is
    inside) and returns ``{"objectness_logits": [B, A], "box_deltas": [B, A, 4]}`` in float32.

    Training data for ``fit`` / ``evaluate``: ``(images, targets)`` where ``targets`` holds either
    ``rpn_labels`` and ``rpn_deltas`` (from ``ds.map(RpnTargetEncoder(...))``), or only padded ``gt_boxes``
    ``[B, M, 4]`` — then ``train_step`` labels the batch itself with ``self.target_encoder`` (on the accelerator).
    ``evaluate`` also reports proposal recall when ``gt_boxes`` are present. With ``compile(jit_compile=True)``
    every step (``fit``, ``evaluate``, ``predict``) compiles whole under XLA (``ProposalConfig.nms="padded"``).

    Args:
      image_size: ``(height, width)`` of the input.
      anchor_config: a single-level ``AnchorConfig`` (defaults: the article's).
      backbone: ``"vgg16"`` (default), ``"resnet50"``, ``"mobilenet_v2"``, ``"simple"`` or a ``keras.Model``.
      backbone_stride: required for a user backbone.
      weights: ``None``, ``"imagenet"`` or a weights-file path (built-in ``keras.applications`` backbones).
      freeze_backbone_layers: the first N backbone layers are not trained.
      preprocessing: override of the backbone's input preprocessing (``"caffe"``, ``"tf"``, ``"unit"``,
        ``"none"``).
      head_channels: channels of the 3×3 conv (512).
      box_loss_weight: weight of the box loss in ``loss`` (1).
      smooth_l1_beta: smooth-L1 transition point (1/9).
      target_encoder_config: ``TargetConfig`` (or a dict of its fields, ``delta_weights`` accepted) for the
        model's ``RpnTargetEncoder``; its ``box_coder`` also decodes the predictions into proposals.
      proposal_config: ``ProposalConfig`` (or a dict) for ``predict_step`` and recall.
      recall_top_n: N of the recall metric (300).
    """

    def __init__(self, image_size=DEFAULT_IMAGE_SIZE, anchor_config=None, backbone="vgg16", backbone_stride=None,
                 weights=None, freeze_backbone_layers=0, preprocessing=None, head_channels=512,
                 box_loss_weight=1.0, smooth_l1_beta=1.0 / 9.0, target_encoder_config=None, proposal_config=None,
                 recall_top_n=300, **kwargs):
        super().__init__(**kwargs)
        self.image_size = validate_image_size(image_size)
        if isinstance(anchor_config, dict):
            anchor_config = AnchorConfig(**anchor_config)
        self.anchor_config = anchor_config if anchor_config is not None else AnchorConfig()
        if not isinstance(self.anchor_config, AnchorConfig):
            raise ValueError("RPNModel supports a single-level AnchorConfig (one feature map)")
        target_config = target_encoder_config if isinstance(target_encoder_config, TargetConfig) else \
            config_from_kwargs(TargetConfig, None, target_encoder_config)
        self.proposal_config = config_from_kwargs(ProposalConfig, proposal_config)
        # tf.image.combined_non_max_suppression has no XLA kernel: with nms="combined" Keras runs the steps without
        # XLA (jit_compile=True then warns and falls back).
        self.supports_jit = self.proposal_config.nms != "combined"
        self.box_loss_weight = float(box_loss_weight)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.recall_top_n = int(recall_top_n)
        self.freeze_backbone_layers = int(freeze_backbone_layers)

        if isinstance(backbone, dict):  # from get_config
            backbone = keras.saving.deserialize_keras_object(backbone)
        if backbone == "simple" and backbone_stride is None:
            backbone_stride = self.anchor_config.stride  # the small backbone is built for the anchors' stride
        self.backbone, stride, mode = build_backbone(backbone, self.image_size, weights, backbone_stride,
                                                     self.freeze_backbone_layers)
        self.backbone_name = backbone if isinstance(backbone, str) else None
        self.backbone_stride = stride
        if stride != self.anchor_config.stride:
            raise ValueError(f"the backbone's stride is {stride} but anchor_config.stride is "
                             f"{self.anchor_config.stride}")
        feature_shape = tuple(self.backbone.output.shape[1:3])
        expected = self.anchor_config.feature_map_size(self.image_size)
        if feature_shape != expected:
            raise ValueError(f"the backbone maps {self.image_size} to a {feature_shape} feature map but the anchors "
                             f"need {expected} (ceil(size / stride)); use an image size divisible by {stride}")
        self.preprocessing = ImagePreprocessing(preprocessing or mode, name="preprocessing")
        self.head = RpnHead(self.anchor_config.num_anchors_per_location, head_channels, name="rpn_head")
        self.target_encoder = RpnTargetEncoder(self.image_size, self.anchor_config, target_config)
        self.num_anchors = self.target_encoder.num_anchors

        self.loss_tracker = RatioMean(name="loss")
        self.objectness_loss_tracker = RatioMean(name="rpn_objectness_loss")
        self.box_loss_tracker = RatioMean(name="rpn_box_loss")
        self.accuracy_tracker = RatioMean(name="rpn_objectness_accuracy")
        self.recall_metric = ProposalRecall(self.recall_top_n, name="proposal_recall")
        # Built at construction (shapes are static), so load_weights works on a fresh model.
        self.build()

    def build(self, input_shape=None):
        """Builds every layer from the static input size (``input_shape`` is implied by ``image_size``)."""
        self.preprocessing.build((None, *self.image_size, 3))
        self.head.build(tuple(self.backbone.output.shape))
        self.built = True

    @property
    def head_channels(self) -> int:
        return self.head.channels

    @property
    def anchors(self):
        """float32 ``Tensor[A, 4]``: the anchors, in the order of the outputs."""
        return self.target_encoder.anchors

    def call(self, images, training=None):
        features = self.backbone(self.preprocessing(images), training=training)
        logits, deltas = self.head(features)
        return {"objectness_logits": keras.ops.cast(logits, "float32"),
                "box_deltas": keras.ops.cast(deltas, "float32")}

    @property
    def metrics(self):
        return [self.loss_tracker, self.objectness_loss_tracker, self.box_loss_tracker, self.accuracy_tracker,
                self.recall_metric]

    def _unpack(self, data):
        if isinstance(data, (tuple, list)):
            images, targets = data[0], data[1] if len(data) > 1 else None
        else:
            images, targets = data, None
        if isinstance(images, dict):
            images = images["image"]
        if not isinstance(targets, dict):
            raise ValueError("RPNModel expects (images, targets) with targets a dict holding 'rpn_labels' and "
                             "'rpn_deltas' (from RpnTargetEncoder) or padded 'gt_boxes'")
        if not all(key in targets for key in TARGET_KEYS):
            if "gt_boxes" not in targets:
                raise ValueError(f"targets need {TARGET_KEYS} or 'gt_boxes'; got {sorted(targets)}")
            # Labels on the accelerator: the same ops as the tf.data path, batched.
            targets = {**targets, **self.target_encoder.encode(targets["gt_boxes"])}
        return images, targets

    def _rpn_losses(self, targets, outputs):
        objectness_sum, box_sum, num_sampled, num_correct = rpn_loss_sums(
            targets["rpn_labels"], targets["rpn_deltas"], outputs["objectness_logits"], outputs["box_deltas"],
            self.smooth_l1_beta)
        # Normalized by the sampled anchors of the *global* batch: gradients summed over replicas then equal
        # the single-device ones.
        normalizer = tf.maximum(global_sum(num_sampled), 1.0)
        loss = (objectness_sum + self.box_loss_weight * box_sum) / normalizer
        self.loss_tracker.update_state(objectness_sum + self.box_loss_weight * box_sum, num_sampled)
        self.objectness_loss_tracker.update_state(objectness_sum, num_sampled)
        self.box_loss_tracker.update_state(box_sum, num_sampled)
        self.accuracy_tracker.update_state(num_correct, num_sampled)
        return loss

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
            proposals = self.propose(outputs, training=False)
            self.recall_metric.update_state(targets["gt_boxes"], proposals["boxes"], proposals["num_proposals"])
        return self._logs()

    def propose(self, outputs, training=False, proposal_config=None):
        """Proposals (``generate_proposals``) from ``call``'s outputs, decoded with the targets' ``BoxCoder``.

        ``nms="auto"`` resolves to the XLA-compilable padded NMS when this model's steps are compiled with XLA.
        """
        config = proposal_config or self.proposal_config
        if config.nms == "auto":
            config = dataclasses.replace(config, nms="padded" if self.jit_compile else "combined")
        return generate_proposals(self.anchors, outputs["objectness_logits"], outputs["box_deltas"],
                                  self.image_size, config, training=training, box_coder=self.target_encoder.box_coder)

    def predict_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        if isinstance(images, dict):
            images = images["image"]
        outputs = self(images, training=False)
        proposals = self.propose(outputs, training=False)
        return {"proposal_boxes": proposals["boxes"], "proposal_scores": proposals["scores"],
                "num_proposals": proposals["num_proposals"], **outputs}

    def get_config(self):
        config = super().get_config()
        backbone = self.backbone_name or keras.saving.serialize_keras_object(self.backbone)
        anchors = self.anchor_config
        config.update(
            image_size=list(self.image_size),
            anchor_config={"stride": anchors.stride, "scales": list(anchors.scales), "ratios": list(anchors.ratios)},
            backbone=backbone, backbone_stride=self.backbone_stride, weights=None,
            freeze_backbone_layers=self.freeze_backbone_layers, preprocessing=self.preprocessing.mode,
            head_channels=self.head_channels, box_loss_weight=self.box_loss_weight,
            smooth_l1_beta=self.smooth_l1_beta, target_encoder_config=config_to_dict(self.target_encoder.config),
            proposal_config=config_to_dict(self.proposal_config), recall_top_n=self.recall_top_n)
        return config
