"""ROI sampling for a second (Fast R-CNN) stage: proposals + GT → a fixed-size, labelled ROI minibatch.

Shape shorthand: B images, N proposals, M padded GT boxes, R = ``num_samples`` ROIs.
"""

from __future__ import annotations

import tensorflow as tf

from rpn_tf.config import RoiSamplerConfig, config_from_kwargs
from rpn_tf.ops import box_ops
from rpn_tf.ops.matching import best_gt_match, valid_gt_mask
from rpn_tf.ops.top_k import top_k_padded
from rpn_tf.ops.sampling import content_seeds, random_seeds, sample_balanced, seeded_generator

BACKGROUND_CLASS = 0
PADDING_CLASS = -1


class RoiSampler(tf.Module):
    """Samples ``num_samples`` ROIs per image at up to ``positive_fraction`` positives (the article's 128 / 25 %).

    A candidate (proposal, or GT box when ``append_gt_boxes``) whose highest IoU with a GT box is ≥
    ``positive_iou`` is positive (class = that GT box's class); one whose highest IoU lies in
    ``[negative_iou_range[0], negative_iou_range[1])`` is background (class 0). Up to
    ``floor(num_samples · positive_fraction)`` positives are drawn at random, negatives fill the rest; if there are
    not enough candidates the remaining slots are padding (class -1, zero box).

    Args:
      config: a ``RoiSamplerConfig`` (or a dict of its fields); default: the article's 128 / 25 % / IoU 0.5.
      **overrides: ``RoiSamplerConfig`` fields (``num_samples``, ``positive_fraction``, ``positive_iou``,
        ``negative_iou_range``, ``append_gt_boxes``, ``box_coder``, ``seed``), and ``delta_weights`` as a shorthand
        for ``box_coder=BoxCoder(delta_weights)`` (default weights 10, 10, 5, 5).
    """

    def __init__(self, config=None, **overrides):
        super().__init__(name="roi_sampler")  # a tf.Module, so its generator is saved with an export
        self.config: RoiSamplerConfig = config_from_kwargs(RoiSamplerConfig, config, overrides)
        self._generator = seeded_generator() if self.config.seed is None else None

    def __call__(self, proposals, gt_boxes, gt_classes, num_proposals=None, seeds=None):
        """Samples ROIs.

        Args:
          proposals: float32 ``Tensor[B, N, 4]`` yxyx (e.g. ``generate_proposals(...)["boxes"]``).
          gt_boxes: float32 ``Tensor[B, M, 4]`` yxyx, padded with -1 (NaN / Inf or inverted boxes, here or in
            ``proposals``, raise ``InvalidArgumentError`` naming the input).
          gt_classes: int ``Tensor[B, M]`` (≥ 1 for objects), padded with -1.
          num_proposals: int ``Tensor[B]``: valid proposals per image (default: all N).
          seeds: optional int64 ``Tensor[B, 2]`` stateless seeds, one per image (a model's own seed generator);
            default: from the config's ``seed`` (content seeds) or this sampler's generator.

        Returns:
          dict: ``rois`` ``[B, R, 4]`` (positives first, then negatives, then zero padding), ``roi_classes``
          int32 ``[B, R]`` (GT class, 0 background, -1 padding), ``roi_deltas`` ``[B, R, 4]`` (positives only,
          zeros elsewhere) and ``matched_gt_index`` int32 ``[B, R]`` (-1 except for positives).
        """
        config = self.config
        proposals = tf.debugging.assert_all_finite(tf.convert_to_tensor(proposals, tf.float32),
                                                   "proposals contain NaN or Inf coordinates")
        gt_boxes = box_ops.validate_boxes(tf.convert_to_tensor(gt_boxes, tf.float32), "gt_boxes")
        gt_classes = tf.cast(gt_classes, tf.int32)
        num_slots = tf.shape(proposals)[1]
        if num_proposals is None:
            num_proposals = tf.fill(tf.shape(proposals)[:1], num_slots)
        candidate_valid = tf.range(num_slots)[None, :] < tf.cast(num_proposals, tf.int32)[:, None]  # (B, N)
        gt_valid = valid_gt_mask(gt_boxes)  # (B, M)
        candidates = proposals
        if config.append_gt_boxes:
            candidates = tf.concat([proposals, gt_boxes], axis=1)  # (B, N+M, 4)
            candidate_valid = tf.concat([candidate_valid, gt_valid], axis=1)

        iou = box_ops.iou_matrix(candidates, gt_boxes)  # (B, C, M)
        iou = tf.where(gt_valid[:, None, :], iou, -1.0)
        best_gt, max_iou = best_gt_match(iou, gt_axis=-1)  # (B, C); -1 without valid GT
        low, high = config.negative_iou_range
        background_iou = tf.maximum(max_iou, 0.0)
        is_positive = candidate_valid & (max_iou >= config.positive_iou)
        is_negative = candidate_valid & ~is_positive & (background_iou >= low) & (background_iou < high)
        labels = tf.where(is_positive, 1, tf.where(is_negative, 0, -1))

        if seeds is not None:
            seeds = tf.cast(seeds, tf.int64)
        elif config.seed is None:
            seeds = random_seeds(tf.shape(gt_boxes)[0], self._generator)
        else:
            seeds = content_seeds(config.seed, gt_boxes)
        sampled = sample_balanced(labels, seeds, config.num_samples, config.positive_fraction)  # (B, C)

        # Order: positives, then negatives, then the rest; stable within each group by candidate index.
        num_candidates = tf.shape(sampled)[1]
        priority = tf.where(sampled == 1, 2, tf.where(sampled == 0, 1, 0))
        order_key = priority * (num_candidates + 1) + (num_candidates - tf.range(num_candidates)[None, :])
        _, order, slot_valid = top_k_padded(order_key, config.num_samples, -1)  # (B, R); fewer candidates: padding

        roi_labels = tf.where(slot_valid, tf.gather(sampled, order, batch_dims=1), -1)  # (B, R)
        rois = tf.where((roi_labels >= 0)[..., None], tf.gather(candidates, order, batch_dims=1), 0.0)
        roi_gt = tf.gather(best_gt, order, batch_dims=1)
        positive = roi_labels == 1
        matched_gt_index = tf.where(positive, roi_gt, -1)
        gt_ext = tf.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]], constant_values=-1.0)
        classes_ext = tf.pad(gt_classes, [[0, 0], [0, 1]], constant_values=PADDING_CLASS)
        matched_boxes = tf.gather(gt_ext, tf.maximum(matched_gt_index, 0), batch_dims=1)
        roi_classes = tf.where(positive, tf.gather(classes_ext, tf.maximum(matched_gt_index, 0), batch_dims=1),
                               tf.where(roi_labels == 0, BACKGROUND_CLASS, PADDING_CLASS))
        # Non-positive slots regress onto themselves (exact zeros, never NaN from padding boxes).
        safe_rois = tf.where(positive[..., None], rois, tf.constant([0.0, 0.0, 1.0, 1.0]))
        target_boxes = tf.where(positive[..., None], matched_boxes, safe_rois)
        roi_deltas = config.box_coder.encode(target_boxes, safe_rois)
        return {"rois": tf.ensure_shape(rois, [None, config.num_samples, 4]),
                "roi_classes": tf.ensure_shape(roi_classes, [None, config.num_samples]),
                "roi_deltas": tf.ensure_shape(roi_deltas, [None, config.num_samples, 4]),
                "matched_gt_index": tf.ensure_shape(matched_gt_index, [None, config.num_samples])}
