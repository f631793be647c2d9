"""The second stage of Faster R-CNN (Fast R-CNN on the RPN's proposals): the box head, its losses and the detection
post-processing.

Shape shorthand: B images, R ROIs per image, S ROI Align output size, C channels, K object classes (background
excluded; class ids 1…K, 0 is background), D detections per image.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from rpn_tf.config import DetectionConfig
from rpn_tf.ops.box_ops import clip_boxes
from rpn_tf.ops.nms import padded_nms


@keras.saving.register_keras_serializable(package="rpn_tf")
class BoxHead(keras.layers.Layer):
    """ROI features → class logits and class-specific box deltas (the article's "two sibling layers").

    ``num_conv`` 3×3 conv + ReLU layers (``conv_channels``; 0 by default), then ``num_fc`` fully connected + ReLU
    layers of ``representation_size`` (2 × 1024: detectron2's / torchvision's ``TwoMLPHead``; ``num_conv=4,
    num_fc=1`` is detectron2's ``4conv1fc``), then a linear classifier over ``K + 1`` classes (background first) and
    a linear regressor of ``4 K`` deltas. Initialisation as detectron2: normal(0.01) classifier, normal(0.001)
    regressor, zero biases.

    ``call(roi_features [B, R, S, S, C])`` → ``(class_logits [B, R, K + 1], box_deltas [B, R, K, 4])``, float32.
    """

    def __init__(self, num_classes, representation_size=1024, num_fc=2, num_conv=0, conv_channels=256, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (object classes, background excluded), got {num_classes}")
        self.representation_size, self.num_fc = int(representation_size), int(num_fc)
        self.num_conv, self.conv_channels = int(num_conv), int(conv_channels)
        if self.num_fc < 0 or self.num_conv < 0 or self.num_fc + self.num_conv == 0:
            raise ValueError(f"BoxHead needs num_fc + num_conv >= 1 (both >= 0), got {num_fc}, {num_conv}")
        self.convs = [keras.layers.Conv2D(self.conv_channels, 3, padding="same", activation="relu",
                                          name=f"conv{index + 1}") for index in range(self.num_conv)]
        self.fcs = [keras.layers.Dense(self.representation_size, activation="relu", name=f"fc{index + 1}")
                    for index in range(self.num_fc)]
        self.classifier = keras.layers.Dense(
            self.num_classes + 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name="class_logits")
        self.regressor = keras.layers.Dense(
            4 * self.num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            name="box_deltas")

    def build(self, input_shape):
        size, channels = int(input_shape[-2]), int(input_shape[-1])
        shape = (None, size, size, channels)
        for conv in self.convs:
            conv.build(shape)
            shape = (None, size, size, self.conv_channels)
        width = size * size * shape[-1]
        for fc in self.fcs:
            fc.build((None, width))
            width = self.representation_size
        self.classifier.build((None, width))
        self.regressor.build((None, width))
        self.built = True

    def call(self, roi_features):
        shape = keras.ops.shape(roi_features)
        batch, rois = shape[0], shape[1]
        x = keras.ops.reshape(roi_features, (-1, *roi_features.shape[2:]))
        for conv in self.convs:
            x = conv(x)
        x = keras.ops.reshape(x, (keras.ops.shape(x)[0], -1))
        for fc in self.fcs:
            x = fc(x)
        logits = keras.ops.reshape(self.classifier(x), (batch, rois, self.num_classes + 1))
        deltas = keras.ops.reshape(self.regressor(x), (batch, rois, self.num_classes, 4))
        return keras.ops.cast(logits, "float32"), keras.ops.cast(deltas, "float32")

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "representation_size": self.representation_size, "num_fc": self.num_fc, "num_conv": self.num_conv,
                "conv_channels": self.conv_channels}


def roi_losses(class_logits, box_deltas, roi_classes, roi_deltas, smooth_l1_beta=1.0 / 9.0):
    """Fast R-CNN losses over the sampled ROIs (torchvision's ``fastrcnn_loss``).

    Classification: softmax cross-entropy over the ``K + 1`` classes, averaged over the sampled ROIs (padding,
    class -1, left out). Box: smooth-L1 (``smooth_l1_beta``) between the deltas predicted *for the ROI's GT class*
    and the targets, summed over the positive ROIs and divided by the number of sampled ROIs.

    Returns:
      ``(classification_sum, box_sum, num_sampled, num_correct)`` float32 scalars: the losses are
      ``sum / max(num_sampled, 1)`` (a batch without any sampled ROI gives 0, not NaN).
    """
    roi_classes = tf.cast(roi_classes, tf.int32)
    sampled = roi_classes >= 0
    weights = tf.cast(sampled, tf.float32)
    safe_classes = tf.maximum(roi_classes, 0)
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_classes, logits=class_logits)
    classification_sum = tf.reduce_sum(cross_entropy * weights)
    positive = roi_classes > 0
    predicted = tf.gather(box_deltas, tf.maximum(roi_classes - 1, 0), batch_dims=2)  # (B, R, 4)
    difference = tf.abs(predicted - tf.cast(roi_deltas, tf.float32))
    beta = float(smooth_l1_beta)
    smooth_l1 = tf.where(difference < beta, 0.5 * difference ** 2 / beta, difference - 0.5 * beta) if beta > 0 \
        else difference
    box_sum = tf.reduce_sum(tf.reduce_sum(smooth_l1, axis=-1) * tf.cast(positive, tf.float32))
    correct = tf.cast(tf.argmax(class_logits, axis=-1, output_type=tf.int32) == roi_classes, tf.float32) * weights
    return classification_sum, box_sum, tf.reduce_sum(weights), tf.reduce_sum(correct)


def postprocess_detections(rois, num_rois, class_logits, box_deltas, box_coder, valid_sizes,
                           config: DetectionConfig, nms="combined"):
    """Class-specific boxes → clipped → boxes under ``config.min_size`` dropped → per-class NMS → at most
    ``config.max_detections`` detections per image.

    Args:
      rois: ``[B, R, 4]`` yxyx canvas pixels (the proposals); ``num_rois`` int ``[B]`` valid ones.
      class_logits / box_deltas: ``BoxHead``'s outputs.
      box_coder: the stage-two ``BoxCoder`` (weights 10, 10, 5, 5).
      valid_sizes: float32 ``[B, 2]``: boxes are clipped to each image's unpadded part of the canvas.
      nms: ``"combined"`` or ``"padded"`` (resolved by the caller from ``config.nms``).

    Returns:
      dict: ``detection_boxes`` ``[B, D, 4]`` yxyx canvas pixels, ``detection_scores`` ``[B, D]``,
      ``detection_classes`` float32 ``[B, D]`` (class ids 1…K, the TF Object Detection API's convention),
      ``num_detections`` int32 ``[B]``; zeros past ``num_detections``.
    """
    num_classes = int(box_deltas.shape[2])
    probabilities = tf.nn.softmax(class_logits, axis=-1)[..., 1:]  # (B, R, K)
    valid = tf.range(tf.shape(rois)[1])[None, :] < tf.cast(num_rois, tf.int32)[:, None]
    probabilities = tf.where(valid[..., None], probabilities, 0.0)
    boxes = box_coder.decode(box_deltas, tf.tile(rois[:, :, None, :], [1, 1, num_classes, 1]))
    boxes = clip_boxes(boxes, tf.reshape(valid_sizes, [-1, 1, 2]))  # (B, R, K, 4)
    large_enough = tf.minimum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]) >= config.min_size
    probabilities = tf.where(large_enough, probabilities, 0.0)  # below every threshold: never a detection
    max_total, per_class = config.max_detections, config.max_detections_per_class
    if nms == "combined":
        out_boxes, scores, classes, count = tf.image.combined_non_max_suppression(
            boxes, probabilities, per_class, max_total, config.nms_iou, config.score_threshold, clip_boxes=False)
        count = tf.cast(count, tf.int32)
        classes = tf.where(tf.range(max_total)[None, :] < count[:, None], classes + 1.0, 0.0)
    else:
        out_boxes, scores, classes, count = _padded_per_class_nms(boxes, probabilities, config)
    return {"detection_boxes": out_boxes, "detection_scores": scores, "detection_classes": classes,
            "num_detections": count}


def _padded_per_class_nms(boxes, scores, config):
    """Per-class NMS with static shapes (XLA): every (image, class) pair is one row of ``padded_nms``."""
    batch = tf.shape(boxes)[0]
    num_rois, num_classes = int(boxes.shape[1]), int(boxes.shape[2])
    per_class = min(config.max_detections_per_class, num_rois)
    rows_boxes = tf.reshape(tf.transpose(boxes, [0, 2, 1, 3]), [-1, num_rois, 4])  # (B·K, R, 4)
    rows_scores = tf.reshape(tf.transpose(scores, [0, 2, 1]), [-1, num_rois])
    rows_scores, order = tf.math.top_k(rows_scores, k=num_rois)
    rows_boxes = tf.gather(rows_boxes, order, batch_dims=1)
    # strictly above the threshold, as combined NMS; padding ROIs (probability 0) never count
    kept_boxes, kept_scores, kept = padded_nms(rows_boxes, rows_scores, per_class, config.nms_iou,
                                               valid=rows_scores > config.score_threshold)
    slots = tf.range(per_class)[None, :] < kept[:, None]
    kept_scores = tf.where(slots, kept_scores, -1.0)
    kept_boxes = tf.reshape(kept_boxes, [batch, num_classes * per_class, 4])
    kept_scores = tf.reshape(kept_scores, [batch, num_classes * per_class])
    class_ids = tf.tile(tf.repeat(tf.range(1, num_classes + 1, dtype=tf.float32), per_class)[None], [batch, 1])
    k = min(config.max_detections, num_classes * per_class)
    top_scores, top = tf.math.top_k(kept_scores, k=k)
    found = top_scores >= 0.0
    out_boxes = tf.where(found[..., None], tf.gather(kept_boxes, top, batch_dims=1), 0.0)
    out_scores = tf.where(found, top_scores, 0.0)
    out_classes = tf.where(found, tf.gather(class_ids, top, batch_dims=1), 0.0)
    padding = config.max_detections - k
    if padding:
        out_boxes = tf.pad(out_boxes, [[0, 0], [0, padding], [0, 0]])
        out_scores, out_classes = (tf.pad(t, [[0, 0], [0, padding]]) for t in (out_scores, out_classes))
    return out_boxes, out_scores, out_classes, tf.reduce_sum(tf.cast(found, tf.int32), axis=1)
