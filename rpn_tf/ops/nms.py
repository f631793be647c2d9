"""Non-maximum suppression in pure TensorFlow: static shapes, batched, XLA-compilable.

Shape shorthand: B images, K candidate boxes per image (sorted by score, best first), T the tile size, N the
number of boxes kept.

``padded_nms`` computes exactly the greedy NMS of the sorted candidates (a box is dropped when its IoU with an
earlier *kept* box exceeds the threshold), tile by tile: a tile of T candidates is first suppressed by the kept
boxes of every earlier tile, then by itself. The loop over tiles stops as soon as every image has N boxes, so
at the usual settings (300 of 6 000) only the first tile or two are ever looked at.
"""

from __future__ import annotations

import tensorflow as tf

from rpn_tf.ops.box_ops import iou_matrix
from rpn_tf.ops.top_k import top_k_padded

DEFAULT_TILE_SIZE = 512


def resolve_nms(setting, padded):
    """An NMS setting (``"auto"``, ``"padded"``, ``"combined"``) with ``"auto"`` resolved: ``"padded"`` (rpn-tf's
    pure-TensorFlow NMS: compiles under XLA, and every op has a GPU kernel) when ``padded`` — inside an XLA-compiled
    function or a training / evaluation step —, else ``"combined"`` (``tf.image.combined_non_max_suppression``: CPU
    only, faster there). The one place where ``"auto"`` is decided (proposals and detections alike)."""
    if setting == "auto":
        return "padded" if padded else "combined"
    return setting


def _self_suppression(iou, keep, iou_threshold):
    """Greedy NMS inside one tile by fixed-point iteration.

    ``iou``: ``[B, T, T]`` IoU of the tile with itself; ``keep``: bool ``[B, T]`` (after cross-tile suppression).
    Box i survives when no earlier surviving box j < i overlaps it by more than the threshold. The update
    ``keep_i ← keep0_i ∧ ¬∃ j < i: keep_j ∧ iou_ji > t`` is exact for index 0 after one step and for index i once
    every j < i is, so it reaches the unique fixed point (the greedy result) in at most T steps; it stops at
    the first step that changes nothing, which can only be that fixed point.
    """
    tile_size = iou.shape[-1]
    earlier = tf.linalg.band_part(tf.ones([tile_size, tile_size], tf.bool), 0, -1) & ~tf.eye(tile_size,
                                                                                           dtype=tf.bool)
    overlaps = (iou > iou_threshold) & earlier[None]  # (B, T_j, T_i): j before i and overlapping
    initial = keep

    def step(current, _changed):
        suppressed = tf.reduce_any(overlaps & current[:, :, None], axis=1)  # (B, T_i)
        updated = initial & ~suppressed
        return updated, tf.reduce_any(updated != current)

    keep, _ = tf.while_loop(lambda _current, changed: changed, step, (keep, tf.constant(True)),
                            maximum_iterations=tile_size)
    return keep


def padded_nms(boxes, scores, max_output_size, iou_threshold=0.7, valid=None, tile_size=DEFAULT_TILE_SIZE):
    """Greedy NMS of score-sorted boxes with padded, fixed-size outputs.

    Args:
      boxes: float32 ``Tensor[B, K, 4]`` yxyx, sorted by ``scores`` in descending order (K static).
      scores: float32 ``Tensor[B, K]``, sorted descending.
      max_output_size: N, boxes kept per image (Python int).
      iou_threshold: a box is suppressed by a kept box of IoU > this.
      valid: optional bool ``Tensor[B, K]``; invalid candidates are never kept and suppress nothing.
      tile_size: T, candidates handled per step (a speed knob; the result does not depend on it).

    Returns:
      ``(boxes [B, N, 4], scores [B, N], num_valid int32 [B])``: the kept boxes in score order, zeros past
      ``num_valid``.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    num_candidates = boxes.shape[1]
    if num_candidates is None:
        raise ValueError("padded_nms needs a static number of candidates (boxes.shape[1])")
    max_output_size = int(max_output_size)
    if valid is None:
        valid = tf.ones(tf.shape(scores), tf.bool)
    tile_size = max(1, min(int(tile_size), num_candidates))
    num_tiles = -(-num_candidates // tile_size)
    padding = num_tiles * tile_size - num_candidates
    tiled_boxes = tf.reshape(tf.pad(boxes, [[0, 0], [0, padding], [0, 0]]), [-1, num_tiles, tile_size, 4])
    keep = tf.reshape(tf.pad(valid, [[0, 0], [0, padding]]), [-1, num_tiles, tile_size])  # (B, tiles, T)
    tile_ids = tf.range(num_tiles)

    def process_tile(index, keep):
        tile_boxes = tf.gather(tiled_boxes, index, axis=1)  # (B, T, 4)
        tile_keep = tf.gather(keep, index, axis=1)  # (B, T)

        def suppress_by_earlier(earlier, tile_keep):
            iou = iou_matrix(tf.gather(tiled_boxes, earlier, axis=1), tile_boxes)  # (B, T_earlier, T)
            earlier_keep = tf.gather(keep, earlier, axis=1)
            suppressed = tf.reduce_any((iou > iou_threshold) & earlier_keep[:, :, None], axis=1)
            return earlier + 1, tile_keep & ~suppressed

        _, tile_keep = tf.while_loop(lambda earlier, _: earlier < index, suppress_by_earlier,
                                     (tf.constant(0), tile_keep))
        tile_keep = _self_suppression(iou_matrix(tile_boxes, tile_boxes), tile_keep, iou_threshold)
        keep = tf.where((tile_ids == index)[None, :, None], tile_keep[:, None, :], keep)
        return index + 1, keep

    def not_done(index, keep):
        visited = (tile_ids < index)[None, :, None]
        kept_so_far = tf.reduce_sum(tf.cast(keep & visited, tf.int32), axis=[1, 2])
        return (index < num_tiles) & tf.reduce_any(kept_so_far < max_output_size)

    num_done, keep = tf.while_loop(not_done, process_tile, (tf.constant(0), keep))
    # Tiles never visited (every image already had N boxes) keep nothing.
    keep = keep & (tile_ids < num_done)[None, :, None]
    keep = tf.reshape(keep, [-1, num_tiles * tile_size])[:, :num_candidates]

    # The first N kept candidates, in candidate (score) order.
    order_key = tf.where(keep, num_candidates - tf.range(num_candidates)[None, :], 0)
    top_keys, selected, present = top_k_padded(order_key, max_output_size, 0)
    selected_valid = present & (top_keys > 0)
    out_boxes = tf.where(selected_valid[..., None], tf.gather(boxes, selected, batch_dims=1), 0.0)
    out_scores = tf.where(selected_valid, tf.gather(scores, selected, batch_dims=1), 0.0)
    num_valid = tf.reduce_sum(tf.cast(selected_valid, tf.int32), axis=1)
    return out_boxes, out_scores, num_valid


def padded_per_class_nms(boxes, scores, max_per_class, max_total, iou_threshold, score_threshold):
    """Per-class NMS with static shapes (XLA): every (image, class) pair is one row of ``padded_nms``; boxes of
    different classes never suppress each other. The same results as ``tf.image.combined_non_max_suppression``
    (scores strictly above ``score_threshold``), in a static ``[B, max_total]``.

    Args:
      boxes: float32 ``[B, R, K, 4]`` yxyx, one box per ROI and class; scores: ``[B, R, K]``.
      max_per_class / max_total: detections kept per class, and per image over all classes.

    Returns:
      ``(boxes [B, D, 4], scores [B, D], classes float32 [B, D] (1…K), num_detections int32 [B])`` with
      D = ``max_total``; zeros past ``num_detections``.
    """
    batch = tf.shape(boxes)[0]
    num_rois, num_classes = int(boxes.shape[1]), int(boxes.shape[2])
    per_class = min(max_per_class, num_rois)
    rows_boxes = tf.reshape(tf.transpose(boxes, [0, 2, 1, 3]), [-1, num_rois, 4])  # (B·K, R, 4)
    rows_scores = tf.reshape(tf.transpose(scores, [0, 2, 1]), [-1, num_rois])
    rows_scores, order = tf.math.top_k(rows_scores, k=num_rois)
    rows_boxes = tf.gather(rows_boxes, order, batch_dims=1)
    # strictly above the threshold, as combined NMS; padding ROIs (probability 0) never count
    kept_boxes, kept_scores, kept = padded_nms(rows_boxes, rows_scores, per_class, iou_threshold,
                                               valid=rows_scores > score_threshold)
    slots = tf.range(per_class)[None, :] < kept[:, None]
    kept_scores = tf.where(slots, kept_scores, -1.0)
    kept_boxes = tf.reshape(kept_boxes, [batch, num_classes * per_class, 4])
    kept_scores = tf.reshape(kept_scores, [batch, num_classes * per_class])
    class_ids = tf.tile(tf.repeat(tf.range(1, num_classes + 1, dtype=tf.float32), per_class)[None], [batch, 1])
    top_scores, top, present = top_k_padded(kept_scores, max_total, -1.0)
    found = present & (top_scores >= 0.0)
    out_boxes = tf.where(found[..., None], tf.gather(kept_boxes, top, batch_dims=1), 0.0)
    out_scores = tf.where(found, top_scores, 0.0)
    out_classes = tf.where(found, tf.gather(class_ids, top, batch_dims=1), 0.0)
    return out_boxes, out_scores, out_classes, tf.reduce_sum(tf.cast(found, tf.int32), axis=1)
