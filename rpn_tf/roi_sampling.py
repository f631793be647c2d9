"""ROI sampling for a second (Fast R-CNN) stage: proposals + GT → a fixed-size, labelled ROI minibatch.

Shape shorthand: B images, N proposals, M padded GT boxes, R = ``num_samples`` ROIs.
"""

from __future__ import annotations

import math

import tensorflow as tf

from rpn_tf import box_ops
from rpn_tf.matching import best_gt_match, valid_gt_mask
from rpn_tf.sampling import content_seeds, random_seeds, sample_balanced

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
      num_samples: ROIs per image (128).
      positive_fraction: largest share of positives (0.25).
      positive_iou: IoU for a positive (0.5).
      negative_iou_range: ``[low, high)`` IoU range for background (0.0, 0.5).
      append_gt_boxes: add the GT boxes to the candidates (True), as Faster R-CNN does.
      delta_weights: ``(wy, wx, wh, ww)`` for the ROI regression targets (10, 10, 5, 5).
      seed: ``None`` (fresh samples each call) or an int (a function of the seed and the GT boxes).
    """

    def __init__(self, num_samples=128, positive_fraction=0.25, positive_iou=0.5, negative_iou_range=(0.0, 0.5),
                 append_gt_boxes=True, delta_weights=(10.0, 10.0, 5.0, 5.0), seed=None):
        if int(num_samples) != num_samples or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        low, high = negative_iou_range
        if not 0.0 <= low <= high <= 1.0 or not 0.0 < positive_iou <= 1.0:
            raise ValueError(f"need 0 <= negative_iou_range[0] <= negative_iou_range[1] <= 1 and 0 < positive_iou "
                             f"<= 1, got {negative_iou_range}, {positive_iou}")
        delta_weights = tuple(float(w) for w in delta_weights)
        if len(delta_weights) != 4 or any(not math.isfinite(w) or w <= 0 for w in delta_weights):
            raise ValueError(f"delta_weights must be 4 finite positive numbers, got {delta_weights}")
        if seed is not None and (isinstance(seed, bool) or int(seed) != seed):
            raise ValueError(f"seed must be None or an int, got {seed!r}")
        super().__init__(name="roi_sampler")  # a tf.Module, so its generator is saved with an export
        self.num_samples = int(num_samples)
        self.positive_fraction = float(positive_fraction)
        self.positive_iou = float(positive_iou)
        self.negative_iou_range = (float(low), float(high))
        self.append_gt_boxes = bool(append_gt_boxes)
        self.delta_weights = delta_weights
        self.seed = None if seed is None else int(seed)
        self._generator = tf.random.Generator.from_non_deterministic_state() if seed is None else None

    def __call__(self, proposals, gt_boxes, gt_classes, num_proposals=None):
        """Samples ROIs.

        Args:
          proposals: float32 ``Tensor[B, N, 4]`` yxyx (e.g. ``generate_proposals(...)["boxes"]``).
          gt_boxes: float32 ``Tensor[B, M, 4]`` yxyx, padded with -1.
          gt_classes: int ``Tensor[B, M]`` (≥ 1 for objects), padded with -1.
          num_proposals: int ``Tensor[B]``: valid proposals per image (default: all N).

        Returns:
          dict: ``rois`` ``[B, R, 4]`` (positives first, then negatives, then zero padding), ``roi_classes``
          int32 ``[B, R]`` (GT class, 0 background, -1 padding), ``roi_deltas`` ``[B, R, 4]`` (positives only,
          zeros elsewhere) and ``matched_gt_index`` int32 ``[B, R]`` (-1 except for positives).
        """
        proposals = tf.convert_to_tensor(proposals, tf.float32)
        gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
        gt_classes = tf.cast(gt_classes, tf.int32)
        num_slots = tf.shape(proposals)[1]
        if num_proposals is None:
            num_proposals = tf.fill(tf.shape(proposals)[:1], num_slots)
        candidate_valid = tf.range(num_slots)[None, :] < tf.cast(num_proposals, tf.int32)[:, None]  # (B, N)
        gt_valid = valid_gt_mask(gt_boxes)  # (B, M)
        candidates = proposals
        if self.append_gt_boxes:
            candidates = tf.concat([proposals, gt_boxes], axis=1)  # (B, N+M, 4)
            candidate_valid = tf.concat([candidate_valid, gt_valid], axis=1)

        iou = box_ops.iou_matrix(candidates, gt_boxes)  # (B, C, M)
        iou = tf.where(gt_valid[:, None, :], iou, -1.0)
        best_gt, max_iou = best_gt_match(iou, gt_axis=-1)  # (B, C); -1 without valid GT
        low, high = self.negative_iou_range
        background_iou = tf.maximum(max_iou, 0.0)
        is_positive = candidate_valid & (max_iou >= self.positive_iou)
        is_negative = candidate_valid & ~is_positive & (background_iou >= low) & (background_iou < high)
        labels = tf.where(is_positive, 1, tf.where(is_negative, 0, -1))

        if self.seed is None:
            seeds = random_seeds(tf.shape(gt_boxes)[0], self._generator)
        else:
            seeds = content_seeds(self.seed, gt_boxes)
        sampled = sample_balanced(labels, seeds, self.num_samples, self.positive_fraction)  # (B, C)

        # Order: positives, then negatives, then the rest; stable within each group by candidate index.
        num_candidates = tf.shape(sampled)[1]
        priority = tf.where(sampled == 1, 2, tf.where(sampled == 0, 1, 0))
        order_key = priority * (num_candidates + 1) + (num_candidates - tf.range(num_candidates)[None, :])
        k = tf.minimum(self.num_samples, num_candidates)
        _, order = tf.math.top_k(order_key, k=k)  # (B, k)
        padding = self.num_samples - k
        order = tf.pad(order, [[0, 0], [0, padding]])
        slot_valid = tf.pad(tf.ones_like(order[:, :k], tf.bool), [[0, 0], [0, padding]])

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
        roi_deltas = box_ops.encode_deltas(target_boxes, safe_rois, self.delta_weights)
        return {"rois": tf.ensure_shape(rois, [None, self.num_samples, 4]),
                "roi_classes": tf.ensure_shape(roi_classes, [None, self.num_samples]),
                "roi_deltas": tf.ensure_shape(roi_deltas, [None, self.num_samples, 4]),
                "matched_gt_index": tf.ensure_shape(matched_gt_index, [None, self.num_samples])}
