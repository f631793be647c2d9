"""Multi-level ROI Align (Mask R-CNN, He et al. 2017) with the FPN paper's level assignment.

Shape shorthand: B images, R boxes per image, L levels, Hl × Wl the map of level l, C channels, S the output size,
P = S · sampling_ratio sample points per side.

Semantics are torchvision's ``roi_align`` / detectron2's ``ROIAlignV2`` with a fixed ``sampling_ratio``: a box in
image pixels is scaled by ``1 / stride``; with ``aligned=True`` it is shifted by half a cell (a pixel's centre is at
``+0.5``), with ``aligned=False`` (the original Mask R-CNN) it is not and degenerate boxes are widened to one cell.
Each of the ``S × S`` bins averages ``sampling_ratio²`` bilinear samples at regularly spaced points; a sample more
than one cell outside the map reads 0, one within a cell of the border reads the border. Static shapes and gathers
only: XLA-compilable, and differentiable with respect to the features (not the boxes).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

CANONICAL_LEVEL = 4  # FPN eq. 1: a 224² box maps to P4
CANONICAL_SIZE = 224.0


LEVEL_MAPPERS = ("fpn", "torchvision")


def assign_levels(boxes, min_level, max_level, canonical_level=CANONICAL_LEVEL, canonical_size=CANONICAL_SIZE,
                  mapper="fpn"):
    """The FPN paper's level of each box: ``floor(k0 + log2(sqrt(h · w) / 224))`` clamped to
    ``[min_level, max_level]`` (level ``k`` = stride ``2^k``).

    Args:
      boxes: ``Tensor[..., 4]`` yxyx in image pixels.
      mapper: ``"fpn"`` (``log2(sqrt(h · w) / 224 + 1e-8)``, detectron2's) or ``"torchvision"`` (torchvision's
        ``LevelMapper``: ``log2(sqrt(h · w) / 224) + 1e-6``); they differ only for boxes within a hair of a level's
        boundary.

    Returns:
      int32 ``Tensor[...]``. Empty boxes go to ``min_level``.
    """
    if mapper not in LEVEL_MAPPERS:
        raise ValueError(f"level mapper must be one of {LEVEL_MAPPERS}, got {mapper!r}")
    boxes = tf.cast(boxes, tf.float32)
    area = tf.maximum((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]), 0.0)
    if mapper == "torchvision":
        level = tf.floor(canonical_level + tf.math.log(tf.sqrt(area) / canonical_size) / math.log(2.0) + 1e-6)
    else:
        level = tf.floor(canonical_level + tf.math.log(tf.sqrt(area) / canonical_size + 1e-8) / math.log(2.0))
    return tf.cast(tf.clip_by_value(level, float(min_level), float(max_level)), tf.int32)


def _check_strides(strides):
    strides = tuple(int(s) for s in strides)
    levels = [int(round(math.log2(s))) for s in strides]
    if any(2 ** level != stride for level, stride in zip(levels, strides)):
        raise ValueError(f"ROI Align needs power-of-two strides, got {strides}")
    if levels != list(range(levels[0], levels[0] + len(levels))):
        raise ValueError(f"ROI Align needs consecutive levels, finest first (e.g. 4, 8, 16, 32), got {strides}")
    return levels


def _axis_samples(start, bin_size, size, points, sampling_ratio):
    """Bilinear taps along one axis: ``(low, high)`` int32 indices and ``(w_low, w_high)`` weights, each
    ``[B, R, P]``, for samples at ``start + (i + 0.5) / sampling_ratio · bin_size``."""
    steps = (tf.range(points, dtype=tf.float32) + 0.5) / float(sampling_ratio)
    coord = start[..., None] + steps * bin_size[..., None]
    size = size[..., None]
    inside = tf.cast((coord >= -1.0) & (coord <= size), tf.float32)
    coord = tf.maximum(coord, 0.0)
    low = tf.minimum(tf.floor(coord), size - 1.0)
    high = tf.minimum(low + 1.0, size - 1.0)
    coord = tf.where(low >= size - 1.0, low, coord)
    fraction = coord - low
    return (tf.cast(low, tf.int32), tf.cast(high, tf.int32)), ((1.0 - fraction) * inside, fraction * inside)


IMPLEMENTATIONS = ("crop_and_resize", "gather", "auto")  # "auto": crop_and_resize (0.2's name, kept)


def multilevel_roi_align(features, strides, boxes, output_size=7, sampling_ratio=2, aligned=True,
                         levels=None, implementation="crop_and_resize", level_mapper="fpn"):
    """ROI Align over a feature pyramid.

    Args:
      features: a list of ``[B, Hl, Wl, C]`` maps, finest first, one per stride (sizes known at run time only:
        ``"crop_and_resize"``).
      strides: the maps' strides, consecutive powers of two (e.g. ``(4, 8, 16, 32)``, or one stride).
      boxes: float ``Tensor[B, R, 4]`` yxyx in image pixels.
      output_size: S (7).
      sampling_ratio: samples per bin side (2).
      aligned: half-pixel alignment (True; detectron2's ``ROIAlignV2``, torchvision ``aligned=True``).
      levels: optional int32 ``[B, R]`` level (log2 stride) of each box; default ``assign_levels`` over the
        given strides (every box on the one map when there is one), with ``level_mapper``.
      implementation: ``"crop_and_resize"`` (default: TensorFlow's fused bilinear kernel on each level's boxes, the
        map padded by one replicated cell so that its border handling is ROI Align's; it has no XLA kernel, so an
        XLA compilation fails naming ``CropAndResize``) or ``"gather"`` (static shapes and gathers only: compiles
        under XLA; the caller chooses it for an XLA-compiled function, as ``RoiHeads`` does with the model's
        ``jit_compile``). Both compute the same values for every sample point
        inside ``(-1, H)`` × ``(-1, W)`` of a map (every box inside the image); a sample exactly on the line -1 or
        H (a box reaching one cell beyond the map, only outside the image) reads 0 with ``"crop_and_resize"``
        and the border value with ``"gather"`` (torchvision's: beyond, both read 0).

    Returns:
      ``Tensor[B, R, S, S, C]`` in the features' dtype.
    """
    if len(features) != len(strides) or not features:
        raise ValueError(f"multilevel_roi_align needs one stride per feature map, got {len(features)} maps and "
                         f"strides {tuple(strides)}")
    level_ids = _check_strides(strides)
    output_size, sampling_ratio = int(output_size), int(sampling_ratio)
    if output_size < 1 or sampling_ratio < 1:
        raise ValueError(f"output_size and sampling_ratio must be >= 1, got {output_size}, {sampling_ratio}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":  # 0.2 detected XLA through a private TensorFlow API; the caller now chooses
        implementation = "crop_and_resize"
    boxes = tf.cast(boxes, tf.float32)
    if levels is None:
        levels = assign_levels(boxes, level_ids[0], level_ids[-1], mapper=level_mapper)
    index = tf.clip_by_value(tf.cast(levels, tf.int32) - level_ids[0], 0, len(level_ids) - 1)  # (B, R)
    if implementation == "crop_and_resize":
        return _crop_and_resize(features, strides, boxes, index, output_size, sampling_ratio, aligned)
    return _gather(features, strides, boxes, index, output_size, sampling_ratio, aligned)


def _sample_grid(boxes, stride, output_size, sampling_ratio, aligned):
    """``(first_y, first_x, step_y, step_x)`` ``[...]`` of the sample points in cells of a map of ``stride``."""
    shift = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = (boxes[..., k] / stride - shift for k in range(4))
    roi_h, roi_w = y2 - y1, x2 - x1
    if not aligned:  # the original ROI Align: boxes of at least one cell
        roi_h, roi_w = tf.maximum(roi_h, 1.0), tf.maximum(roi_w, 1.0)
    step_y, step_x = roi_h / (output_size * sampling_ratio), roi_w / (output_size * sampling_ratio)
    return y1 + 0.5 * step_y, x1 + 0.5 * step_x, step_y, step_x


def _replicate_border(feature):
    """``[B, H, W, C]`` → ``[B, H + 2, W + 2, C]`` with the border cells repeated once around the map: one gather of
    the flattened map (3–4× faster on CPU than ``tf.pad(mode="SYMMETRIC")``, which gives the same values)."""
    height, width, channels = int(feature.shape[1]), int(feature.shape[2]), int(feature.shape[3])
    rows = np.clip(np.arange(-1, height + 1), 0, height - 1)
    cols = np.clip(np.arange(-1, width + 1), 0, width - 1)
    index = tf.constant((rows[:, None] * width + cols[None, :]).reshape(-1), tf.int32)
    flat = tf.reshape(feature, [-1, height * width, channels])
    return tf.reshape(tf.gather(flat, index, axis=1), [-1, height + 2, width + 2, channels])


def _crop_and_resize_image_gradient(grad, image, boxes, box_indices, points):
    """The gradient of ``tf.image.crop_and_resize`` (bilinear, extrapolation value 0) with respect to ``image``,
    summed by ``unsorted_segment_sum``: the same sum in the same order on every run. (TensorFlow's own CPU
    ``CropAndResizeGradImage`` shards the boxes over threads and adds in a varying order, so without
    ``enable_op_determinism`` a detector's weights differed in the last bits from run to run.)"""
    shape = tf.shape(image)
    batch, height, width = shape[0], shape[1], shape[2]
    channels = int(image.shape[-1])

    def taps(low_norm, high_norm, size):
        """``(low, high)`` int32 ``[N, P]`` indices and weights (0 for a sample outside: extrapolated)."""
        size_f = tf.cast(size, tf.float32)
        if points > 1:
            step = (high_norm - low_norm) * (size_f - 1.0) / float(points - 1)
            coord = low_norm[:, None] * (size_f - 1.0) + tf.range(points, dtype=tf.float32)[None] * step[:, None]
        else:
            coord = (0.5 * (low_norm + high_norm) * (size_f - 1.0))[:, None]
        inside = tf.cast((coord >= 0.0) & (coord <= size_f - 1.0), tf.float32)
        low, high = tf.floor(coord), tf.math.ceil(coord)
        fraction = coord - low
        clamp = lambda v: tf.cast(tf.clip_by_value(v, 0.0, size_f - 1.0), tf.int32)  # noqa: E731
        return (clamp(low), clamp(high)), ((1.0 - fraction) * inside, fraction * inside)

    (top, bottom), (w_top, w_bottom) = taps(boxes[:, 0], boxes[:, 2], height)
    (left, right), (w_left, w_right) = taps(boxes[:, 1], boxes[:, 3], width)
    base = tf.cast(box_indices, tf.int32)[:, None, None] * (height * width)
    grad = tf.cast(grad, tf.float32)
    total = None
    for rows, w_rows in ((top, w_top), (bottom, w_bottom)):
        for cols, w_cols in ((left, w_left), (right, w_right)):
            ids = base + rows[:, :, None] * width + cols[:, None, :]  # [N, P, P]
            weight = w_rows[:, :, None] * w_cols[:, None, :]
            part = tf.math.unsorted_segment_sum(tf.reshape(grad * weight[..., None], [-1, channels]),
                                                tf.reshape(ids, [-1]), batch * height * width)
            total = part if total is None else total + part
    return tf.cast(tf.reshape(total, shape), image.dtype)


def crop_and_resize(image, boxes, box_indices, points):
    """``tf.image.crop_and_resize(image, boxes, box_indices, [points, points], extrapolation_value=0)`` whose
    gradient with respect to ``image`` is deterministic (``_crop_and_resize_image_gradient``); the boxes' gradient
    is TensorFlow's."""

    @tf.custom_gradient
    def forward(image, boxes):
        crops = tf.image.crop_and_resize(image, boxes, box_indices, [points, points], extrapolation_value=0.0)

        def backward(grad):
            boxes_grad = tf.raw_ops.CropAndResizeGradBoxes(grads=grad, image=tf.cast(image, tf.float32), boxes=boxes,
                                                           box_ind=box_indices)
            return _crop_and_resize_image_gradient(grad, image, boxes, box_indices, points), boxes_grad

        return crops, backward

    return forward(image, boxes)


def _crop_and_resize(features, strides, boxes, index, output_size, sampling_ratio, aligned):
    """Each level's boxes through ``tf.image.crop_and_resize`` on the map padded by one replicated cell: a sample
    within one cell outside the map then reads the border (ROI Align's clamp), one further out the extrapolation
    value 0 — exactly ROI Align's rule."""
    batch = tf.shape(boxes)[0]
    num_boxes = tf.shape(boxes)[1]
    flat_boxes = tf.reshape(boxes, [-1, 4])
    image_index = tf.repeat(tf.range(batch), num_boxes)
    parts = tf.dynamic_partition(tf.range(tf.size(image_index)), tf.reshape(index, [-1]), len(features))
    points = output_size * sampling_ratio
    pooled = []
    for feature, stride, part in zip(features, strides, parts):
        if feature.shape[1] is not None and feature.shape[2] is not None:
            height, width = int(feature.shape[1]), int(feature.shape[2])
            padded = _replicate_border(feature)
        else:  # a map of a size known at run time (a backbone of any input size): the same border by tf.pad
            height, width = (tf.cast(tf.shape(feature)[k], tf.float32) for k in (1, 2))
            padded = tf.pad(feature, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
        first_y, first_x, step_y, step_x = _sample_grid(tf.gather(flat_boxes, part), float(stride), output_size,
                                                        sampling_ratio, aligned)
        last_y, last_x = first_y + (points - 1) * step_y, first_x + (points - 1) * step_x
        # crop_and_resize samples y1 · (Hp - 1) + i · (y2 - y1) · (Hp - 1) / (P - 1) on the padded map (Hp = H + 2)
        normalized = tf.stack([(first_y + 1.0) / (height + 1), (first_x + 1.0) / (width + 1),
                               (last_y + 1.0) / (height + 1), (last_x + 1.0) / (width + 1)], axis=-1)
        crops = crop_and_resize(padded, normalized, tf.gather(image_index, part), points)
        pooled.append(tf.nn.avg_pool2d(crops, sampling_ratio, sampling_ratio, "VALID"))
    out = tf.dynamic_stitch(parts, pooled)
    channels = int(features[0].shape[-1])
    out = tf.reshape(tf.cast(out, features[0].dtype), [batch, num_boxes, output_size, output_size, channels])
    return tf.ensure_shape(out, [None, boxes.shape[1], output_size, output_size, channels])


def _gather(features, strides, boxes, index, output_size, sampling_ratio, aligned):
    """Every sample's four bilinear taps gathered from the levels flattened into one tensor (static shapes)."""
    sizes = [(int(f.shape[1]), int(f.shape[2])) for f in features]
    channels = int(features[0].shape[-1])
    batch = tf.shape(features[0])[0]
    flat = tf.concat([tf.reshape(f, [batch, h * w, channels]) for f, (h, w) in zip(features, sizes)], axis=1)
    offsets = [0]
    for h, w in sizes[:-1]:
        offsets.append(offsets[-1] + h * w)

    def per_box(values):
        return tf.gather(tf.constant(values, tf.float32), index)

    scale = per_box([1.0 / s for s in strides])
    heights, widths = per_box([h for h, _ in sizes]), per_box([w for _, w in sizes])
    shift = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = (boxes[..., k] * scale - shift for k in range(4))
    roi_h, roi_w = y2 - y1, x2 - x1
    if not aligned:  # the original ROI Align: boxes of at least one cell
        roi_h, roi_w = tf.maximum(roi_h, 1.0), tf.maximum(roi_w, 1.0)
    points = output_size * sampling_ratio
    (y_low, y_high), (wy_low, wy_high) = _axis_samples(y1, roi_h / output_size, heights, points, sampling_ratio)
    (x_low, x_high), (wx_low, wx_high) = _axis_samples(x1, roi_w / output_size, widths, points, sampling_ratio)
    base = tf.cast(per_box([float(o) for o in offsets]), tf.int32)[..., None, None]
    row_width = tf.cast(widths, tf.int32)[..., None, None]

    pooled = None
    for rows, row_weight in ((y_low, wy_low), (y_high, wy_high)):
        for cols, col_weight in ((x_low, wx_low), (x_high, wx_high)):
            flat_index = base + rows[..., :, None] * row_width + cols[..., None, :]  # (B, R, P, P)
            weight = row_weight[..., :, None] * col_weight[..., None, :]
            term = tf.gather(flat, flat_index, batch_dims=1) * tf.cast(weight[..., None], flat.dtype)
            pooled = term if pooled is None else pooled + term
    shape = tf.concat([tf.shape(boxes)[:2], [output_size, sampling_ratio, output_size, sampling_ratio, channels]], 0)
    pooled = tf.reduce_mean(tf.reshape(pooled, shape), axis=[3, 5])
    return tf.ensure_shape(pooled, [None, boxes.shape[1], output_size, output_size, channels])
