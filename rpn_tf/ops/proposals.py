"""From RPN outputs to proposals: decode → clip → min size → pre-NMS top-k → NMS → post-NMS top-k.

Shape shorthand: B images, A anchors (A_l on level l), K = ``pre_nms_top_k``, N = ``post_nms_top_k`` proposals.

Several anchor levels (FPN) follow torchvision's ``RegionProposalNetwork.filter_proposals`` and detectron2's
``find_top_rpn_proposals``: the top K of *each level* by score, NMS within each level separately (boxes of
different levels never suppress each other), then the N best of all levels by score. With
``ProposalConfig(per_level_nms=False)`` the candidates of all levels go through one NMS instead.
"""

from __future__ import annotations

import tensorflow as tf

from rpn_tf.config import ProposalConfig, validate_image_size
from rpn_tf.ops import box_ops
from rpn_tf.ops.box_coder import BoxCoder
from rpn_tf.ops.nms import padded_nms
from rpn_tf.ops.top_k import top_k_padded


def _top_candidates(ranking, logits, boxes, small, level_sizes, pre_nms_top_k):
    """Per level: the top ``min(K, A_l)`` anchors by ``ranking`` (``K`` when ``A_l`` is known only at run time:
    missing slots are padding). Returns per-level ``(scores [B, k], boxes [B, k, 4])``: the sigmoid of the logits,
    -1 for small boxes and padding (never kept by NMS)."""
    selected, start = [], 0
    for size in level_sizes:
        static = size if isinstance(size, int) else None
        k = pre_nms_top_k if static is None else min(pre_nms_top_k, static)
        level = slice(None), slice(start, start + size)
        _, index, present = top_k_padded(ranking[level], k, float("-inf"))
        valid = present & ~tf.gather(small[level], index, batch_dims=1)
        scores = tf.where(valid, tf.sigmoid(tf.gather(logits[level], index, batch_dims=1)), -1.0)
        selected.append((scores, tf.gather(boxes[level], index, batch_dims=1)))
        start += size
    return selected


def _nms_per_level(candidates, post_nms_top_k, config):
    """NMS within each level, then the ``post_nms_top_k`` best of all levels: ``(boxes, scores, num_valid)``."""
    if config.nms == "padded":
        kept = [padded_nms(boxes, scores, post_nms_top_k, config.nms_iou, valid=scores > 0.0)
                for scores, boxes in candidates]
        if len(kept) == 1:
            return kept[0]
        boxes = tf.concat([k[0] for k in kept], axis=1)
        scores = tf.concat([tf.where(tf.range(post_nms_top_k)[None, :] < k[2][:, None], k[1], -1.0) for k in kept],
                           axis=1)
        top_scores, index = tf.math.top_k(scores, k=post_nms_top_k)
        valid = top_scores > 0.0
        return (tf.where(valid[..., None], tf.gather(boxes, index, batch_dims=1), 0.0),
                tf.where(valid, top_scores, 0.0), tf.reduce_sum(tf.cast(valid, tf.int32), axis=1))
    # combined_non_max_suppression with one "class" per level: NMS per class, then the best N of all classes.
    boxes = tf.concat([boxes for _, boxes in candidates], axis=1)[:, :, None, :]  # (B, ΣK, 1, 4)
    num_levels = len(candidates)
    # A box scores -1 (never kept) in the other levels' columns.
    scores = tf.concat([tf.where(tf.range(num_levels) == level, scores[..., None], -1.0)
                        for level, (scores, _) in enumerate(candidates)], axis=1)  # (B, ΣK, levels)
    nms_boxes, nms_scores, _, num_valid = tf.image.combined_non_max_suppression(
        boxes, scores, max_output_size_per_class=post_nms_top_k, max_total_size=post_nms_top_k,
        iou_threshold=config.nms_iou, score_threshold=0.0, pad_per_class=False, clip_boxes=False)
    return nms_boxes, nms_scores, num_valid


def generate_proposals(anchors, objectness_logits, deltas, image_size, config=None, training=False,
                       box_coder=None, valid_sizes=None, level_sizes=None):
    """Turns RPN outputs into padded proposals.

    Args:
      anchors: float32 ``Tensor[A, 4]`` yxyx.
      objectness_logits: ``Tensor[B, A]``.
      deltas: ``Tensor[B, A, 4]``.
      image_size: ``(height, width)`` of the network input; boxes are clipped to it.
      config: ``ProposalConfig`` (defaults: the article's).
      training: selects the train or test top-k counts.
      box_coder: the ``BoxCoder`` the targets were encoded with (default ``BoxCoder()``, weights 1).
      valid_sizes: optional ``Tensor[B, 2]``: each image's unpadded ``(h, w)`` on the canvas; boxes are clipped to
        it instead of ``image_size``.
      level_sizes: anchors per level (``anchors_per_level``) for several levels; default one level. Scalar tensors
        when the canvas is known only at run time (``anchors`` then computed in the graph: ``ProposalGenerator``).

    Returns:
      dict with ``boxes`` float32 ``[B, N, 4]`` yxyx (zeros past ``num_proposals``), ``scores`` float32
      ``[B, N]`` (sigmoid probabilities, 0 past ``num_proposals``) and ``num_proposals`` int32 ``[B]``.
      With ``config.nms == "padded"`` the whole function compiles under XLA (``"auto"`` means ``"combined"`` here).
    """
    config = config or ProposalConfig()
    box_coder = box_coder or BoxCoder()
    if not tf.is_tensor(image_size):
        image_size = validate_image_size(image_size)
    pre_nms_top_k, post_nms_top_k = config.top_k(training)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    level_sizes = tuple(level_sizes) if level_sizes is not None else (anchors.shape[0],)
    if all(isinstance(size, int) for size in level_sizes) and sum(level_sizes) != anchors.shape[0]:
        raise ValueError(f"level_sizes {level_sizes} add up to {sum(level_sizes)}, not to the {anchors.shape[0]} "
                         "anchors")
    logits = tf.cast(objectness_logits, tf.float32)
    deltas = tf.cast(deltas, tf.float32)

    boxes = box_coder.decode(deltas, anchors[None])  # (B, A, 4)
    clip_size = image_size if valid_sizes is None else tf.cast(valid_sizes, tf.float32)
    boxes = box_ops.clip_boxes(boxes, clip_size)
    heights = boxes[..., 2] - boxes[..., 0]
    widths = boxes[..., 3] - boxes[..., 1]
    small = (heights < config.min_size) | (widths < config.min_size)
    # Ranked by logit (the sigmoid's order, without its ties at saturation); small boxes rank last, or — torchvision's
    # order — take their place in the top k and are dropped after it.
    ranking = logits if config.top_k_before_min_size else tf.where(small, float("-inf"), logits)
    candidates = _top_candidates(ranking, logits, boxes, small, level_sizes, pre_nms_top_k)
    if len(candidates) > 1 and not config.per_level_nms:  # one NMS over every level's candidates, by score
        merged_scores = tf.concat([level_scores for level_scores, _ in candidates], axis=1)
        merged_boxes = tf.concat([level_boxes for _, level_boxes in candidates], axis=1)
        top_scores, order = tf.math.top_k(merged_scores, k=merged_scores.shape[1])
        candidates = [(top_scores, tf.gather(merged_boxes, order, batch_dims=1))]
    nms_boxes, nms_scores, num_valid = _nms_per_level(candidates, post_nms_top_k, config)
    return {"boxes": nms_boxes, "scores": nms_scores, "num_proposals": tf.cast(num_valid, tf.int32)}
