"""Keras metrics for the RPN: proposal recall (and COCO-style average recall) and a ratio mean that is exact
under ``tf.distribute``."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from rpn_tf.ops.box_ops import iou_matrix
from rpn_tf.ops.matching import valid_gt_mask

AR_IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2).tolist())  # COCO's 0.5:0.95


@keras.saving.register_keras_serializable(package="rpn_tf")
class RatioMean(keras.metrics.Metric):
    """``sum(numerator) / sum(denominator)`` over all updates and replicas (e.g. a loss summed over sampled
    anchors divided by their count). Both sums are aggregated across replicas, so the result equals the
    single-device one under ``tf.distribute``."""

    def __init__(self, name="ratio_mean", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.numerator = self.add_variable(shape=(), initializer="zeros", name="numerator", aggregation="sum")
        self.denominator = self.add_variable(shape=(), initializer="zeros", name="denominator", aggregation="sum")

    def update_state(self, numerator, denominator):
        self.numerator.assign_add(tf.cast(numerator, self.numerator.dtype))
        self.denominator.assign_add(tf.cast(denominator, self.denominator.dtype))

    def result(self):
        return tf.math.divide_no_nan(self.numerator, self.denominator)

    def reset_state(self):
        self.numerator.assign(0.0)
        self.denominator.assign(0.0)


@keras.saving.register_keras_serializable(package="rpn_tf")
class ProposalRecall(keras.metrics.Metric):
    """Recall of GT boxes by the top-``top_n`` proposals at IoU thresholds, plus average recall (AR@N).

    A GT box is recalled at threshold t if one of the image's first ``min(top_n, num_proposals)`` proposals has
    IoU ≥ t with it. AR@N averages recall over IoU 0.5:0.05:0.95 as COCO's AR does. Padding GT rows (-1,
    zero area) are not counted.

    ``update_state(gt_boxes [B, M, 4], proposal_boxes [B, N, 4], num_proposals [B])`` with proposals sorted by
    score. ``result()`` is a dict: ``recall@{N}_iou{t}`` for each threshold and ``ar@{N}``.
    """

    def __init__(self, top_n=300, iou_thresholds=(0.5, 0.7), name="proposal_recall", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.top_n = int(top_n)
        if self.top_n <= 0:
            raise ValueError(f"top_n must be positive, got {top_n}")
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self._threshold_list = sorted({round(t, 2) for t in self.iou_thresholds} | set(AR_IOU_THRESHOLDS))
        self._all_thresholds = tf.constant(self._threshold_list, tf.float32)
        count = len(self._threshold_list)
        self.recalled = self.add_variable(shape=(count,), initializer="zeros", name="recalled", aggregation="sum")
        self.num_gt = self.add_variable(shape=(), initializer="zeros", name="num_gt", aggregation="sum")

    def update_state(self, gt_boxes, proposal_boxes, num_proposals=None, sample_weight=None):
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        proposal_boxes = tf.cast(proposal_boxes[:, :self.top_n], tf.float32)
        num_slots = tf.shape(proposal_boxes)[1]
        if num_proposals is None:
            num_proposals = tf.fill(tf.shape(proposal_boxes)[:1], num_slots)
        valid_proposal = tf.range(num_slots)[None, :] < tf.cast(num_proposals, tf.int32)[:, None]  # (B, N)
        iou = iou_matrix(gt_boxes, proposal_boxes)  # (B, M, N)
        iou = tf.where(valid_proposal[:, None, :], iou, 0.0)
        best = tf.reduce_max(tf.concat([iou, tf.zeros_like(iou[..., :1])], axis=-1), axis=-1)  # (B, M)
        valid_gt = tf.cast(valid_gt_mask(gt_boxes), tf.float32)
        hits = tf.cast(best[..., None] >= self._all_thresholds, tf.float32) * valid_gt[..., None]  # (B, M, T)
        self.recalled.assign_add(tf.reduce_sum(hits, axis=[0, 1]))
        self.num_gt.assign_add(tf.reduce_sum(valid_gt))

    def result(self):
        recall = tf.math.divide_no_nan(self.recalled, self.num_gt)
        thresholds = self._threshold_list
        results = {f"recall@{self.top_n}_iou{t:g}": recall[thresholds.index(round(t, 2))]
                   for t in self.iou_thresholds}
        ar_index = [thresholds.index(t) for t in AR_IOU_THRESHOLDS]
        results[f"ar@{self.top_n}"] = tf.reduce_mean(tf.gather(recall, ar_index))
        return results

    def reset_state(self):
        self.recalled.assign(tf.zeros_like(self.recalled))
        self.num_gt.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "top_n": self.top_n, "iou_thresholds": self.iou_thresholds}
