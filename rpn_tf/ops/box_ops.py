"""Box operations in pure TensorFlow (``BoxCoder`` in ``box_coder.py`` wraps the delta encoding).

Boxes are ``[y1, x1, y2, x2]`` in absolute pixels with no +1 (width = x2 - x1) unless a function says
otherwise. Every function accepts any number of leading (batch) dimensions and works eagerly, in graph mode and
under XLA.
"""

from __future__ import annotations

import tensorflow as tf


BOX_FORMATS = ("yxyx", "xyxy", "xywh")
# Keras's (keras.utils.bounding_boxes) names for the same: "rel_" = coordinates in [0, 1] units of the image's height
# and width. The models read targets' "boxes" in one of these; "gt_boxes" are always yxyx pixels.
BOUNDING_BOX_FORMATS = BOX_FORMATS + tuple(f"rel_{name}" for name in BOX_FORMATS)


def _check_format(box_format: str) -> str:
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
    return box_format


def parse_bounding_box_format(bounding_box_format: str):
    """``(box_format, normalized)`` of a ``BOUNDING_BOX_FORMATS`` name (``"rel_xyxy"`` → ``("xyxy", True)``); a
    ``ValueError`` naming the choices for any other value."""
    if bounding_box_format not in BOUNDING_BOX_FORMATS:
        raise ValueError(f"bounding_box_format must be one of {BOUNDING_BOX_FORMATS}, got {bounding_box_format!r}")
    normalized = bounding_box_format.startswith("rel_")
    return bounding_box_format[len("rel_"):] if normalized else bounding_box_format, normalized


def _image_hw(image_size, dtype):
    """``(height, width)`` from a ``(h, w)`` pair or a ``Tensor[..., 2]``, broadcastable to ``[..., 1]``."""
    size = tf.cast(tf.convert_to_tensor(image_size), dtype)
    return size[..., 0:1], size[..., 1:2]


def convert_boxes(boxes, source_format="yxyx", target_format="yxyx", image_size=None,
                  source_normalized=False, target_normalized=False):
    """Converts boxes between ``yxyx``, ``xyxy`` and ``xywh`` (x, y of the top-left corner, width, height).

    Args:
      boxes: ``Tensor[..., 4]`` in ``source_format``.
      source_format, target_format: one of ``BOX_FORMATS``.
      image_size: ``(height, width)`` or ``Tensor[..., 2]`` (one size per leading index); needed when either side
        is normalized (coordinates divided by the image height / width).
      source_normalized, target_normalized: whether coordinates are in ``[0, 1]`` units of the image size.

    Returns:
      ``Tensor[..., 4]`` in ``target_format``, same dtype as ``boxes``.
    """
    _check_format(source_format)
    _check_format(target_format)
    boxes = tf.convert_to_tensor(boxes)
    if not boxes.dtype.is_floating:
        boxes = tf.cast(boxes, tf.float32)
    if (source_normalized or target_normalized) and image_size is None:
        raise ValueError("image_size is required to convert normalized boxes")
    a, b, c, d = tf.unstack(boxes, num=4, axis=-1)
    if source_format == "yxyx":
        y1, x1, y2, x2 = a, b, c, d
    elif source_format == "xyxy":
        x1, y1, x2, y2 = a, b, c, d
    else:  # xywh
        x1, y1, x2, y2 = a, b, a + c, b + d
    if source_normalized != target_normalized:
        height, width = _image_hw(image_size, boxes.dtype)
        height, width = height[..., 0], width[..., 0]
        if source_normalized:
            y1, x1, y2, x2 = y1 * height, x1 * width, y2 * height, x2 * width
        else:
            y1, x1, y2, x2 = y1 / height, x1 / width, y2 / height, x2 / width
    if target_format == "yxyx":
        out = [y1, x1, y2, x2]
    elif target_format == "xyxy":
        out = [x1, y1, x2, y2]
    else:
        out = [x1, y1, x2 - x1, y2 - y1]
    return tf.stack(out, axis=-1)


def box_area(boxes):
    """Area of ``Tensor[..., 4]`` yxyx boxes → ``Tensor[...]`` (0 for inverted boxes)."""
    heights = tf.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    widths = tf.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return heights * widths


def iou_matrix(boxes1, boxes2):
    """Pairwise intersection over union.

    Args:
      boxes1: ``Tensor[..., N, 4]`` yxyx.
      boxes2: ``Tensor[..., M, 4]`` yxyx; leading dimensions broadcast against ``boxes1``'s.

    Returns:
      ``Tensor[..., N, M]``; 0 where the union is empty (degenerate boxes never divide by zero).
    """
    boxes1 = tf.convert_to_tensor(boxes1)
    boxes2 = tf.convert_to_tensor(boxes2, dtype=boxes1.dtype)
    # (..., N, 1) against (..., 1, M) -> (..., N, M)
    y1a, x1a, y2a, x2a = [coord[..., :, None] for coord in tf.unstack(boxes1, num=4, axis=-1)]
    y1b, x1b, y2b, x2b = [coord[..., None, :] for coord in tf.unstack(boxes2, num=4, axis=-1)]
    inter_h = tf.maximum(tf.minimum(y2a, y2b) - tf.maximum(y1a, y1b), 0.0)
    inter_w = tf.maximum(tf.minimum(x2a, x2b) - tf.maximum(x1a, x1b), 0.0)
    intersection = inter_h * inter_w
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - intersection
    return tf.math.divide_no_nan(intersection, union)


def _centres_sizes(boxes):
    heights = boxes[..., 2] - boxes[..., 0]
    widths = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * heights, boxes[..., 1] + 0.5 * widths, heights, widths


def encode_deltas(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Regression targets that move ``anchors`` onto ``boxes``.

    Args:
      boxes: ``Tensor[..., 4]`` yxyx target boxes with positive height and width.
      anchors: ``Tensor[..., 4]`` yxyx, broadcastable to ``boxes``.
      weights: ``(wy, wx, wh, ww)`` multipliers.

    Returns:
      ``Tensor[..., 4]`` of ``(wy*(gy-ay)/ah, wx*(gx-ax)/aw, wh*log(gh/ah), ww*log(gw/aw))``.
    """
    boxes = tf.convert_to_tensor(boxes)
    anchors = tf.cast(anchors, boxes.dtype)
    gy, gx, gh, gw = _centres_sizes(boxes)
    ay, ax, ah, aw = _centres_sizes(anchors)
    wy, wx, wh, ww = weights
    return tf.stack([
        wy * (gy - ay) / ah,
        wx * (gx - ax) / aw,
        wh * tf.math.log(gh / ah),
        ww * tf.math.log(gw / aw),
    ], axis=-1)


def decode_deltas(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), scale_clip=4.135166556742356):
    """Inverse of ``encode_deltas``: applies ``deltas`` to ``anchors``.

    Args:
      deltas: ``Tensor[..., 4]`` ``(dy, dx, dh, dw)``.
      anchors: ``Tensor[..., 4]`` yxyx, broadcastable to ``deltas``.
      weights: the ``(wy, wx, wh, ww)`` used to encode.
      scale_clip: ``dh`` and ``dw`` (after dividing by their weights) are clamped to at most this value
        (``log(1000 / 16)`` = 4.1352), so that ``exp`` cannot overflow on wild predictions.

    Returns:
      ``Tensor[..., 4]`` yxyx boxes, not clipped to the image.
    """
    deltas = tf.convert_to_tensor(deltas)
    anchors = tf.cast(anchors, deltas.dtype)
    ay, ax, ah, aw = _centres_sizes(anchors)
    wy, wx, wh, ww = weights
    dy = deltas[..., 0] / wy
    dx = deltas[..., 1] / wx
    dh = tf.minimum(deltas[..., 2] / wh, scale_clip)
    dw = tf.minimum(deltas[..., 3] / ww, scale_clip)
    centre_y = dy * ah + ay
    centre_x = dx * aw + ax
    half_h = 0.5 * tf.exp(dh) * ah
    half_w = 0.5 * tf.exp(dw) * aw
    return tf.stack([centre_y - half_h, centre_x - half_w, centre_y + half_h, centre_x + half_w], axis=-1)


def clip_boxes(boxes, image_size):
    """Clips yxyx boxes to ``[0, height] × [0, width]``.

    Args:
      boxes: ``Tensor[..., N, 4]``.
      image_size: ``(height, width)`` or ``Tensor[..., 2]`` with one size per leading index.
    """
    boxes = tf.convert_to_tensor(boxes)
    height, width = _image_hw(image_size, boxes.dtype)
    y1, x1, y2, x2 = tf.unstack(boxes, num=4, axis=-1)
    y1 = tf.clip_by_value(y1, 0.0, height)
    y2 = tf.clip_by_value(y2, 0.0, height)
    x1 = tf.clip_by_value(x1, 0.0, width)
    x2 = tf.clip_by_value(x2, 0.0, width)
    return tf.stack([y1, x1, y2, x2], axis=-1)


def validate_boxes(boxes, name="gt_boxes"):
    """Raises ``InvalidArgumentError`` (via ``tf.debugging``) if yxyx ``boxes`` hold non-finite values or inverted
    boxes (y2 < y1 or x2 < x1). Padding rows of -1 and zero-area boxes pass. Returns ``boxes``."""
    boxes = tf.debugging.assert_all_finite(
        boxes, f"{name} contain NaN or Inf coordinates; boxes must be finite [y1, x1, y2, x2] pixels")
    return run_checks(boxes, [inverted_boxes_check(boxes, name)])


def inverted_boxes_check(boxes, name="gt_boxes"):
    """A ``run_checks`` check: no inverted yxyx box (y2 < y1 or x2 < x1) in ``boxes`` ``[..., 4]``."""
    inverted = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    return (tf.logical_not(tf.reduce_any(inverted)),
            lambda: [f"{name} contain inverted boxes (y2 < y1 or x2 < x1); boxes must be [y1, x1, y2, x2] with "
                     "y1 <= y2 and x1 <= x2 (check box_format). First inverted box:",
                     tf.boolean_mask(tf.reshape(boxes, [-1, 4]), tf.reshape(inverted, [-1]))[:1]],
            f"assert_{name}_not_inverted")


def run_checks(value, checks):
    """``value`` once every check holds, else ``InvalidArgumentError`` with the first failing check's message.

    ``checks``: ``(ok bool scalar, message_data: () -> list, name)`` triples. One ``tf.cond`` over all of them; the
    message data (e.g. the first offending box, found with a ``boolean_mask``) is computed only on failure, so the
    usual case costs a few comparisons (this runs on every element of a ``tf.data`` pipeline).
    """
    if not checks:
        return value

    def failed():
        guards = []
        for ok, message_data, name in checks:  # in order: the first failing check raises
            with tf.control_dependencies(guards):
                guards = [tf.debugging.Assert(ok, message_data(), name=name)]
        with tf.control_dependencies(guards):
            return tf.identity(value)

    all_ok = checks[0][0]
    for ok, _, _ in checks[1:]:
        all_ok = all_ok & ok
    return tf.cond(all_ok, lambda: tf.identity(value), failed)