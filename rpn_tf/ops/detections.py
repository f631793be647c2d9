"""Detection post-processing of the second stage, in pure TensorFlow: class-specific boxes → clip → small boxes
dropped → per-class NMS → the best detections per image.

Shape shorthand: B images, R ROIs per image, K object classes (class ids 1…K), D detections per image.
"""

from __future__ import annotations

import tensorflow as tf

from rpn_tf.config import DetectionConfig
from rpn_tf.ops.box_ops import clip_boxes
from rpn_tf.ops.nms import padded_per_class_nms


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
        out_boxes, scores, classes, count = padded_per_class_nms(boxes, probabilities, per_class, max_total,
                                                                 config.nms_iou, config.score_threshold)
    return {"detection_boxes": out_boxes, "detection_scores": scores, "detection_classes": classes,
            "num_detections": count}
