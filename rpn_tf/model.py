"""``RPNModel``: backbone + the article's RPN head, trained with ``model.fit``.

Shape shorthand: B images, H × W input, Hf × Wf feature map, K anchors per location, A = Hf·Wf·K.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from rpn_tf.backbones import ImagePreprocessing, build_backbone
from rpn_tf.config import DEFAULT_IMAGE_SIZE, AnchorConfig, validate_image_size
from rpn_tf.metrics import ProposalRecall, RatioMean
from rpn_tf.proposals import ProposalConfig, generate_proposals
from rpn_tf.targets import RpnTargetEncoder

TARGET_KEYS = ("rpn_labels", "rpn_deltas")


def smooth_l1(difference, beta):
    """Elementwise smooth-L1 (Huber / beta): ``0.5 x² / beta`` if ``|x| < beta`` else ``|x| - 0.5 beta``."""
    absolute = tf.abs(difference)
    if beta <= 0:
        return absolute
    return tf.where(absolute < beta, 0.5 * tf.square(absolute) / beta, absolute - 0.5 * beta)


def rpn_loss_sums(rpn_labels, rpn_deltas, objectness_logits, box_deltas, smooth_l1_beta=1.0 / 9.0):
    """Unnormalized RPN losses of a batch.

    Args:
      rpn_labels: int ``[B, A]`` in {1, 0, -1} (sampled).
      rpn_deltas: float ``[B, A, 4]`` targets.
      objectness_logits: ``[B, A]``; box_deltas: ``[B, A, 4]`` predictions.

    Returns:
      ``(objectness_sum, box_sum, num_sampled, num_correct)``, float32 scalars: binary cross-entropy summed over
      sampled anchors (label ≥ 0), smooth-L1 summed over positives and coordinates, the number of sampled anchors
      and of sampled anchors whose predicted class (logit > 0) matches the label.
    """
    labels = tf.cast(rpn_labels, tf.int32)
    logits = tf.cast(objectness_logits, tf.float32)
    sampled = tf.cast(labels >= 0, tf.float32)
    positive = tf.cast(labels == 1, tf.float32)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=positive, logits=logits)
    objectness_sum = tf.reduce_sum(cross_entropy * sampled)
    box_error = smooth_l1(tf.cast(box_deltas, tf.float32) - tf.cast(rpn_deltas, tf.float32), smooth_l1_beta)
    box_sum = tf.reduce_sum(tf.reduce_sum(box_error, axis=-1) * positive)
    correct = tf.cast(tf.equal(tf.cast(logits > 0.0, tf.float32), positive), tf.float32) * sampled
    return objectness_sum, box_sum, tf.reduce_sum(sampled), tf.reduce_sum(correct)


def _global_sum(value):
    """Sum of ``value`` over the replicas of the current ``tf.distribute`` step (itself on one device)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _anchor_config_to_dict(config: AnchorConfig):
    return {"stride": config.stride, "scales": list(config.scales), "ratios": list(config.ratios)}


@keras.saving.register_keras_serializable(package="rpn_tf")
class RPNModel(keras.Model):
    """Region Proposal Network: backbone → 3×3 conv (``head_channels``, ReLU) → sibling 1×1 convs for objectness
    (K) and deltas (4K), reshaped to the encoder's anchor order.

    ``call(images)`` takes ``[B, H, W, 3]`` images with 0–255 values (any dtype; the backbone's preprocessing is
    inside) and returns ``{"objectness_logits": [B, A], "box_deltas": [B, A, 4]}`` in float32.

    Training data for ``fit`` / ``evaluate``: ``(images, targets)`` where ``targets`` holds either
    ``rpn_labels`` and ``rpn_deltas`` (from ``ds.map(RpnTargetEncoder(...))``), or only padded ``gt_boxes``
    ``[B, M, 4]`` — then ``train_step`` labels the batch itself with ``self.target_encoder`` (on the accelerator).
    ``evaluate`` also reports proposal recall when ``gt_boxes`` are present.

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
      target_encoder_config: keyword arguments for the ``RpnTargetEncoder`` used for in-graph labeling (image
        size and anchors come from this model).
      proposal_config: ``ProposalConfig`` for ``predict_step`` and recall.
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
        if isinstance(proposal_config, dict):
            proposal_config = ProposalConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                for k, v in proposal_config.items()})
        self.proposal_config = proposal_config or ProposalConfig()
        self.box_loss_weight = float(box_loss_weight)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.head_channels = int(head_channels)
        self.target_encoder_config = dict(target_encoder_config or {})
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

        num_anchors_per_location = self.anchor_config.num_anchors_per_location
        initializer = keras.initializers.RandomNormal(stddev=0.01)
        self.rpn_conv = keras.layers.Conv2D(self.head_channels, 3, padding="same", activation="relu",
                                            kernel_initializer=initializer, name="rpn_conv")
        self.objectness_conv = keras.layers.Conv2D(num_anchors_per_location, 1, kernel_initializer=initializer,
                                                   name="rpn_objectness")
        self.delta_conv = keras.layers.Conv2D(4 * num_anchors_per_location, 1, kernel_initializer=initializer,
                                              name="rpn_deltas")
        self.target_encoder = RpnTargetEncoder(self.image_size, self.anchor_config, **self.target_encoder_config)
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
        feature_shape = tuple(self.backbone.output.shape)
        self.rpn_conv.build(feature_shape)
        head_shape = (*feature_shape[:-1], self.head_channels)
        self.objectness_conv.build(head_shape)
        self.delta_conv.build(head_shape)
        self.built = True

    @property
    def anchors(self):
        """float32 ``Tensor[A, 4]``: the anchors, in the order of the outputs."""
        return self.target_encoder.anchors

    def call(self, images, training=None):
        features = self.backbone(self.preprocessing(images), training=training)
        features = self.rpn_conv(features)
        logits = self.objectness_conv(features)  # (B, Hf, Wf, K)
        deltas = self.delta_conv(features)  # (B, Hf, Wf, 4K), anchor-major then (dy, dx, dh, dw)
        # (B, Hf, Wf, K) -> (B, Hf*Wf*K): row, column, then anchor (ratio-major / scale-minor) as the encoder
        logits = keras.ops.reshape(logits, (-1, self.num_anchors))
        deltas = keras.ops.reshape(deltas, (-1, self.num_anchors, 4))
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
        normalizer = tf.maximum(_global_sum(num_sampled), 1.0)
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
            if isinstance(result, dict):
                logs.update(result)
            else:
                logs[metric.name] = result
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

    def _make_step_function_without_xla(self, make_function, force):
        """Builds Keras's test / predict function with XLA only around the network.

        ``tf.image.combined_non_max_suppression`` has no XLA kernel, so a step that makes proposals cannot be
        compiled whole; with ``compile(jit_compile=True)`` the backbone and head still run compiled
        (``_inference``), and NMS runs as a plain TensorFlow op.
        """
        jit_compile = self.jit_compile
        self._xla_inference = bool(jit_compile)
        if not jit_compile:
            return make_function(force)
        self.jit_compile = False
        try:
            return make_function(force)
        finally:
            self.jit_compile = jit_compile

    def make_test_function(self, force=False):
        return self._make_step_function_without_xla(super().make_test_function, force)

    def make_predict_function(self, force=False):
        return self._make_step_function_without_xla(super().make_predict_function, force)

    def _inference(self, images):
        """``call(images, training=False)``, XLA-compiled when the model was compiled with ``jit_compile``."""
        if getattr(self, "_xla_inference", False):
            if getattr(self, "_compiled_inference", None) is None:
                self._compiled_inference = tf.function(lambda x: self(x, training=False), jit_compile=True)
            return self._compiled_inference(images)
        return self(images, training=False)

    def test_step(self, data):
        images, targets = self._unpack(data)
        outputs = self._inference(images)
        self._rpn_losses(targets, outputs)
        if "gt_boxes" in targets:
            proposals = self.propose(outputs, training=False)
            self.recall_metric.update_state(targets["gt_boxes"], proposals["boxes"], proposals["num_proposals"])
        return self._logs()

    def propose(self, outputs, training=False):
        """Proposals (``generate_proposals``) from ``call``'s outputs."""
        return generate_proposals(self.anchors, outputs["objectness_logits"], outputs["box_deltas"],
                                  self.image_size, self.proposal_config, training=training)

    def predict_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        if isinstance(images, dict):
            images = images["image"]
        outputs = self._inference(images)
        proposals = self.propose(outputs, training=False)
        return {"proposal_boxes": proposals["boxes"], "proposal_scores": proposals["scores"],
                "num_proposals": proposals["num_proposals"], **outputs}

    def get_config(self):
        config = super().get_config()
        backbone = self.backbone_name or keras.saving.serialize_keras_object(self.backbone)
        config.update(
            image_size=list(self.image_size), anchor_config=_anchor_config_to_dict(self.anchor_config),
            backbone=backbone, backbone_stride=self.backbone_stride, weights=None,
            freeze_backbone_layers=self.freeze_backbone_layers, preprocessing=self.preprocessing.mode,
            head_channels=self.head_channels, box_loss_weight=self.box_loss_weight,
            smooth_l1_beta=self.smooth_l1_beta, target_encoder_config=self.target_encoder_config,
            proposal_config=dataclasses.asdict(self.proposal_config), recall_top_n=self.recall_top_n)
        return config
