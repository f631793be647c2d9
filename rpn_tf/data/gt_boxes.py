"""Ground-truth boxes at the input edge: format conversion to yxyx pixels, validation and padding.

Shape shorthand: G GT boxes of one image, B images, M = ``max_boxes`` (the padded count).
"""

from __future__ import annotations

import tensorflow as tf

from rpn_tf.ops import box_ops

GT_PADDING_VALUE = -1.0
CLASS_PADDING_VALUE = -1
DEFAULT_CLASS = 1  # class given to boxes of inputs that carry no classes (class-agnostic "object")


def validate_gt_boxes(gt_boxes, name="gt_boxes"):
    """``rpn_tf.ops.box_ops.validate_boxes``: NaN / Inf and inverted boxes raise ``InvalidArgumentError``."""
    return box_ops.validate_boxes(gt_boxes, name)


def check_box_tensor(boxes, name="gt_boxes"):
    """float32 ``boxes`` after a static check that they are ``[G, 4]`` or ``[B, G, 4]`` (``ValueError`` naming the
    shape otherwise)."""
    boxes = tf.cast(boxes, tf.float32)
    if boxes.shape.rank is not None and boxes.shape.rank not in (2, 3):
        raise ValueError(f"{name} must be [G, 4] or [B, G, 4], got shape {boxes.shape}")
    if boxes.shape[-1] is not None and boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have 4 coordinates in the last axis, got shape {boxes.shape}")
    return boxes


def to_yxyx_pixels(gt_boxes, box_format, normalized, image_size):
    """``[G, 4]`` / ``[B, G, 4]`` boxes in ``box_format`` (normalized or not) → float32 yxyx pixels: the one
    conversion at the input edge (the encoder's ``__call__``, the models' ``boxes`` targets).

    ``image_size``: ``(height, width)`` or ``Tensor[2]`` of the image the boxes belong to (for normalized boxes).
    Padding rows (all -1) stay padding whatever the format (xywh's -1 rows would read as inverted boxes).
    """
    gt_boxes = check_box_tensor(gt_boxes, "boxes")
    if box_format == "yxyx" and not normalized:
        return gt_boxes
    converted = box_ops.convert_boxes(gt_boxes, box_format, "yxyx", image_size=image_size,
                                      source_normalized=normalized)
    padding = tf.reduce_all(gt_boxes == GT_PADDING_VALUE, axis=-1, keepdims=True)
    return tf.where(padding, GT_PADDING_VALUE, converted)


def pad_boxes(gt_boxes, gt_classes, max_boxes: int):
    """Pads ``[G, 4]`` boxes with -1 rows and ``[G]`` classes with -1 to ``max_boxes``.

    Raises ``InvalidArgumentError`` if ``G > max_boxes``: no box is ever dropped silently.

    Returns:
      ``(boxes [M, 4] float32, classes [M] int32, num_boxes int32 scalar)``.
    """
    num_boxes = tf.shape(gt_boxes)[0]
    check = tf.debugging.assert_less_equal(
        num_boxes, max_boxes,
        message=f"an example has more GT boxes than max_boxes={max_boxes}; raise max_boxes so none is dropped")
    with tf.control_dependencies([check]):
        padding = max_boxes - num_boxes
    boxes = tf.pad(gt_boxes, [[0, padding], [0, 0]], constant_values=GT_PADDING_VALUE)
    classes = tf.pad(gt_classes, [[0, padding]], constant_values=CLASS_PADDING_VALUE)
    return tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(classes, [max_boxes]), num_boxes


def classes_for(gt_boxes, gt_classes=None):
    """int32 ``[G]`` classes for ``[G, 4]`` boxes: ``gt_classes`` checked for length, or ``DEFAULT_CLASS``."""
    if gt_classes is None:
        return tf.fill(tf.shape(gt_boxes)[:1], DEFAULT_CLASS)
    gt_classes = tf.cast(gt_classes, tf.int32)
    check = tf.debugging.assert_equal(tf.shape(gt_classes), tf.shape(gt_boxes)[:1],
                                      message="'classes' and 'boxes' have different lengths")
    with tf.control_dependencies([check]):
        return tf.identity(gt_classes)


def drop_padding_rows(gt_boxes, gt_classes=None):
    """Drops rows of ``[G, 4]`` boxes that are all -1 (padding given in the input) and their classes."""
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    if gt_boxes.shape.rank != 2:
        return gt_boxes, gt_classes
    keep = tf.where(~tf.reduce_all(gt_boxes == GT_PADDING_VALUE, axis=-1))[:, 0]
    if gt_classes is not None:
        gt_classes = tf.gather(classes_for(gt_boxes, gt_classes), keep)  # lengths checked first
    return tf.gather(gt_boxes, keep), gt_classes


def check_boxes_in_image(gt_boxes, image_size, normalized=False, name="gt_boxes", validate=False):
    """Asserts that no yxyx pixel box of ``[G, 4]`` lies entirely outside an image of ``image_size`` (``[2]``)
    and, unless the boxes were declared ``normalized``, that they do not look normalized (every coordinate ≤ 1.5
    on an image of 64 px or more); with ``validate``, first ``validate_gt_boxes``'s checks too (NaN / Inf,
    inverted boxes), all in one ``tf.cond``. Returns ``gt_boxes``."""
    checks = []
    if validate:
        gt_boxes = tf.debugging.assert_all_finite(
            gt_boxes, f"{name} contain NaN or Inf coordinates; boxes must be finite [y1, x1, y2, x2] pixels")
        checks.append(box_ops.inverted_boxes_check(gt_boxes, name))
    size = tf.cast(image_size, tf.float32)
    height, width = size[0], size[1]
    outside = (gt_boxes[:, 0] >= height) | (gt_boxes[:, 1] >= width) | (gt_boxes[:, 2] <= 0.0) | \
        (gt_boxes[:, 3] <= 0.0)
    checks.append((
        ~tf.reduce_any(outside),
        lambda: [f"{name}: a box lies entirely outside the image (height, width) =", size, "; first such box "
                 "[y1, x1, y2, x2]:", tf.boolean_mask(gt_boxes, outside)[:1], "(check box_format and the image)"],
        "assert_gt_boxes_inside_image"))
    if not normalized:
        looks_normalized = (tf.shape(gt_boxes)[0] > 0) & (tf.minimum(height, width) >= 64.0) & \
            tf.reduce_all(gt_boxes <= 1.5)
        checks.append((
            ~looks_normalized,
            lambda: [f"{name}: every coordinate is <= 1.5 on an image of (height, width) =", size,
                     "; these look like normalized boxes: pass normalized_boxes=True"],
            "assert_gt_boxes_in_pixels"))
    return box_ops.run_checks(gt_boxes, checks)
