"""RPN target assignment: padded GT boxes → sampled anchor labels and regression deltas, in pure TensorFlow.

Shape shorthand: B images, A anchors, A_in anchors inside the image, G GT boxes per image (padded with -1 rows).
The input side (formats, resizing, padding, validation) is ``rpn_tf.data.encoder.RpnTargetEncoder``'s job.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rpn_tf.config import TargetConfig
from rpn_tf.ops import native as native_ops
from rpn_tf.ops.box_coder import BoxCoder
from rpn_tf.ops.matching import TIE_TOLERANCE, AnchorMatcher, valid_gt_mask
from rpn_tf.ops.sampling import content_seeds, random_seeds, sample_balanced, seeded_generator


class RpnTargetAssigner:
    """Labels a fixed set of anchors (the article's rules), samples them and computes their deltas.

    Args:
      anchors: ``[A, 4]`` yxyx anchors, NumPy or eager (constants of the graph).
      image_size: ``(height, width)`` of the network input (for the cross-boundary rule).
      config: ``TargetConfig``; its thresholds, sampling, ``box_coder`` and ``seed`` are used here.
      cell_origins: ``[A, 2]`` feature-cell origins of the anchors (``anchor_cell_origins``), for padded images
        with a negative ``allowed_border``.
    """

    def __init__(self, anchors, image_size, config: TargetConfig, cell_origins=None):
        self.config = config
        self.matcher = AnchorMatcher(anchors, image_size, config.allowed_border, config.positive_iou,
                                     config.negative_iou, cell_origins)
        # Per anchor: (centre y, centre x, log h, log w) and (wy / h, wx / w, wh, ww), as constants.
        self._anchor_constants = config.box_coder.anchor_constants(anchors)
        # Unseeded sampling draws from a stateful generator: new samples on every pass over a dataset.
        self._generator = seeded_generator() if config.seed is None else None
        # Bottom-right corners of the inside anchors: the native op's valid-region test (allowed_border >= 0).
        self._anchor_corners = tf.constant(np.asarray(anchors, np.float32).reshape(-1, 4)[
            self.matcher.inside_index.numpy()][:, 2:4])

    def seeds(self, gt_boxes):
        """Per-image sampling seeds ``[B, 2]`` for padded ``gt_boxes`` ``[B, G, 4]`` (see ``TargetConfig.seed``)."""
        if self.config.seed is None:
            return random_seeds(tf.shape(gt_boxes)[0], self._generator)
        return content_seeds(self.config.seed, gt_boxes)

    def usable_gt(self, gt_boxes):
        """bool ``[B, G]``: GT rows that take part in matching — valid and at least ``min_gt_size`` on each side."""
        size = self.config.min_gt_size
        return valid_gt_mask(gt_boxes) & (gt_boxes[..., 2] - gt_boxes[..., 0] >= size) & \
            (gt_boxes[..., 3] - gt_boxes[..., 1] >= size)

    def sample(self, labels, seeds):
        """The configured sampling of inside-anchor labels ``[B, A_in]`` (``sampling="none"`` keeps them all)."""
        if self.config.sampling == "none":
            return labels
        return sample_balanced(labels, seeds, self.config.samples_per_image, self.config.positive_fraction)

    def native_module(self):
        """The loaded native ops (``rpn_tf.ops.native``) when ``config.implementation`` asks for them —
        ``"native"``, or ``"auto"`` with the process-wide switch on (``rpn_tf.ops.native.enable()`` /
        ``RPN_TF_NATIVE=1``) — else ``None`` (the default: core TensorFlow ops, no compiler looked for). When they
        are asked for but cannot be had: a one-line ``RuntimeError`` saying why."""
        implementation = self.config.implementation
        if implementation == "tf" or (implementation == "auto" and not native_ops.enabled()):
            return None
        return native_ops.require()

    def __call__(self, gt_boxes, seeds=None, valid_sizes=None, target_format="dense", native=False):
        """Sampled targets of every anchor.

        Args:
          gt_boxes: float32 ``[B, G, 4]`` yxyx network pixels, validated (padding rows of -1 allowed).
          seeds: int ``[B, 2]`` stateless seeds; default ``self.seeds(gt_boxes)``.
          valid_sizes: optional ``[B, 2]`` unpadded ``(h, w)`` per image: anchors of the padding are -1.
          target_format: ``"dense"`` or ``"sparse"`` (see below).
          native: compute with the native CPU kernels when the config asks for them (``native_module()``) —
            identical outputs; leave ``False`` under XLA or on accelerators.

        Returns:
          ``"dense"``: ``rpn_labels`` int32 ``[B, A]`` in {1, 0, -1} (sampled) and ``rpn_deltas`` float32
          ``[B, A, 4]`` (each anchor's deltas to its matched GT box; zeros where there is none).
          ``"sparse"`` (needs sampling): the ``S = samples_per_image`` sampled anchors only, in anchor order —
          ``rpn_sample_indices`` int32 ``[B, S]`` (anchor indices, -1 past the sample), ``rpn_sample_labels``
          int32 ``[B, S]`` (1 / 0, -1 past the sample) and ``rpn_sample_deltas`` float32 ``[B, S, 4]``: the dense
          targets at those indices, ~5 KB per image instead of ~450 KB.
        """
        seeds = self.seeds(gt_boxes) if seeds is None else tf.reshape(tf.cast(seeds, tf.int64), [-1, 2])
        module = self.native_module() if native else None
        if module is not None:
            return self._native_targets(module, gt_boxes, seeds, valid_sizes, target_format)
        labels, matched_gt_index, _ = self.matcher.match_inside(gt_boxes, self.usable_gt(gt_boxes), valid_sizes)
        sampled = self.sample(labels, seeds)  # (B, A_in)
        # Per-GT terms (cy, cx, log h, log w), once per box; one spare row keeps gathers in range when G == 0.
        gt_terms = tf.pad(BoxCoder.box_terms(gt_boxes), [[0, 0], [0, 1], [0, 0]])
        if target_format == "sparse":
            return self._sparse(sampled, matched_gt_index, gt_terms)
        # Inside → all anchors with one int gather: label and matched GT packed in one int32 (outside: -1, -1).
        packed = self.matcher.scatter_to_all(tf.bitwise.bitwise_or(
            tf.bitwise.left_shift(matched_gt_index + 1, 2), sampled + 1), 0)
        labels_all = tf.bitwise.bitwise_and(packed, 3) - 1
        matched_all = tf.bitwise.right_shift(packed, 2) - 1
        # Deltas of every anchor straight from the per-GT terms (no [A_in, 4] intermediate to scatter). An
        # unmatched anchor reads its own terms from the table's anchor part, so its deltas are exact zeros without
        # a mask (a broadcast multiply or select over [A, 4] cost more than the rest of this step).
        anchor_terms, scales = self._anchor_constants
        num_anchors = self.matcher.num_anchors
        rows = tf.where(matched_all >= 0, matched_all + num_anchors, tf.range(num_anchors)[None, :])
        if gt_terms.shape[0] == 1:  # the tf.data path: one image
            matched_terms = tf.gather(tf.concat([anchor_terms, gt_terms[0]], axis=0), rows[0])[None]
        else:
            table = tf.concat([tf.broadcast_to(anchor_terms[None], tf.stack([tf.shape(gt_terms)[0], num_anchors, 4])),
                               gt_terms], axis=1)
            matched_terms = tf.gather(table, rows, batch_dims=1)  # (B, A, 4)
        deltas = (matched_terms - anchor_terms) * scales
        return {"rpn_labels": labels_all, "rpn_deltas": deltas}

    def _native_targets(self, module, gt_boxes, seeds, valid_sizes, target_format):
        """``__call__`` with the native kernels: one op for IoU, labels and sampling, one for the dense (or sparse)
        outputs."""
        config, matcher = self.config, self.matcher
        gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
        balanced = config.sampling != "none"
        sizes = tf.zeros([0, 2], tf.float32) if valid_sizes is None else \
            tf.reshape(tf.cast(valid_sizes, tf.float32), [-1, 2])
        sampled, matched_gt_index = module.rpn_tf_label_and_sample(
            gt_boxes, sizes, tf.cast(seeds, tf.int64), matcher.inside_anchors, self._region_coords(valid_sizes),
            positive_iou=config.positive_iou, negative_iou=config.negative_iou, min_gt_size=float(config.min_gt_size),
            tie_factor=1.0 - TIE_TOLERANCE, num_samples=config.samples_per_image if balanced else 0,
            max_positives=int(config.samples_per_image * config.positive_fraction) if balanced else 0,
            region_border=max(matcher.allowed_border, 0.0), region_strict=matcher.allowed_border < 0)
        # The ops' shape functions give static [B, A_in], [B, A] / [B, S] shapes (the anchors are constants).
        gt_terms = BoxCoder.box_terms(gt_boxes)
        anchor_terms, scales = self._anchor_constants
        if target_format == "sparse":
            size = config.samples_per_image
            indices, labels, deltas = module.rpn_tf_sparse_targets(sampled, matched_gt_index, matcher.inside_index,
                                                                   anchor_terms, scales, gt_terms, size=size)
            return {"rpn_sample_indices": indices, "rpn_sample_labels": labels, "rpn_sample_deltas": deltas}
        labels, deltas = module.rpn_tf_dense_targets(sampled, matched_gt_index, matcher._inverse_index, anchor_terms,
                                                     scales, gt_terms)
        return {"rpn_labels": labels, "rpn_deltas": deltas}

    def _region_coords(self, valid_sizes):
        """``[A_in, 2]`` per inside anchor, compared with the valid size by the native op: the anchor's bottom-right
        corner (``allowed_border >= 0``) or its feature cell's origin (negative ``allowed_border``)."""
        matcher = self.matcher
        if matcher.allowed_border >= 0:
            return self._anchor_corners
        if matcher._inside_cell_origins is None:
            if valid_sizes is not None:
                raise ValueError("AnchorMatcher needs cell_origins for valid_sizes with a negative allowed_border")
            return tf.zeros([matcher.num_inside, 2], tf.float32)
        return matcher._inside_cell_origins

    def _sparse(self, sampled, matched_gt_index, gt_terms):
        if self.config.sampling == "none":
            raise ValueError("target_format='sparse' needs sampling (TargetConfig.sampling='balanced'): with "
                             "sampling='none' every labeled anchor is a target")
        size = self.config.samples_per_image
        num_inside = self.matcher.num_inside
        is_sampled = sampled >= 0
        if sampled.shape[0] == 1:  # the tf.data path: one image
            position = tf.cast(tf.where(is_sampled[0])[:, 0], tf.int32)[None, :size]
        else:  # the first S sampled anchors in anchor order (there are at most S)
            keys = tf.where(is_sampled, num_inside - tf.range(num_inside)[None, :], 0)
            top = tf.math.top_k(keys, k=min(size, num_inside))
            position = tf.where(top.values > 0, num_inside - top.values, -1)
        present = position >= 0
        safe = tf.maximum(position, 0)
        anchor_index = tf.gather(self.matcher.inside_index, safe)  # (B, S) indices among all anchors
        matched = tf.where(present, tf.gather(matched_gt_index, safe, batch_dims=1), -1)
        terms = tf.gather(gt_terms, tf.maximum(matched, 0), batch_dims=1)
        constants = tuple(tf.gather(c, anchor_index) for c in self._anchor_constants)
        deltas = tf.where((matched >= 0)[..., None], BoxCoder.encode_with_constants(terms, constants), 0.0)
        pad = [[0, 0], [0, size - tf.shape(position)[1]]]
        batch = sampled.shape[0]  # static shapes for batching, TPUs and XLA: [B, S] and [B, S, 4]
        return {
            "rpn_sample_indices": tf.ensure_shape(tf.pad(tf.where(present, anchor_index, -1), pad,
                                                         constant_values=-1), [batch, size]),
            "rpn_sample_labels": tf.ensure_shape(tf.pad(tf.where(present, tf.gather(sampled, safe, batch_dims=1), -1),
                                                        pad, constant_values=-1), [batch, size]),
            "rpn_sample_deltas": tf.ensure_shape(tf.pad(deltas, pad + [[0, 0]]), [batch, size, 4]),
        }
