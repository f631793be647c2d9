"""RPN target assignment: padded GT boxes → sampled anchor labels and regression deltas, in pure TensorFlow.

Shape shorthand: B images, A anchors, A_in anchors inside the image, G GT boxes per image (padded with -1 rows).
The input side (formats, resizing, padding, validation) is ``rpn_tf.data.encoder.RpnTargetEncoder``'s job.
"""

from __future__ import annotations

import tensorflow as tf

from rpn_tf.config import TargetConfig
from rpn_tf.ops.box_coder import BoxCoder
from rpn_tf.ops.matching import IGNORE, AnchorMatcher, valid_gt_mask
from rpn_tf.ops.sampling import content_seeds, random_seeds, sample_balanced


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
        # Per inside anchor: (centre y, centre x, log h, log w) and (wy / h, wx / w, wh, ww), as constants.
        self._anchor_constants = config.box_coder.anchor_constants(self.matcher.inside_anchors.numpy())
        # Unseeded sampling draws from a stateful generator: new samples on every pass over a dataset.
        self._generator = tf.random.Generator.from_non_deterministic_state() if config.seed is None else None

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

    def inside_targets(self, gt_boxes, valid_sizes=None):
        """Labels before sampling and deltas of the inside anchors: ``([B, A_in] int32, [B, A_in, 4] float32)``.

        ``gt_boxes``: float32 ``[B, G, 4]`` yxyx network pixels, validated (padding rows of -1 allowed);
        ``valid_sizes``: optional ``[B, 2]`` unpadded ``(h, w)`` of each image on the canvas.
        """
        labels, matched_gt_index, _ = self.matcher.match_inside(gt_boxes, self.usable_gt(gt_boxes), valid_sizes)
        # Deltas from per-GT terms (computed once per GT box, then gathered) and constant per-anchor terms.
        gt_terms = BoxCoder.box_terms(gt_boxes)  # (B, G, 4)
        # One spare row keeps the gather in range when G == 0; unmatched anchors never use what it returns.
        gt_terms = tf.pad(gt_terms, [[0, 0], [0, 1], [0, 0]])
        matched_terms = tf.gather(gt_terms, tf.maximum(matched_gt_index, 0), batch_dims=1)  # (B, A_in, 4)
        deltas = BoxCoder.encode_with_constants(matched_terms, self._anchor_constants)
        # Unmatched anchors (and padding rows, whose log sizes are -inf) get exact zeros.
        return labels, tf.where((matched_gt_index >= 0)[..., None], deltas, 0.0)

    def __call__(self, gt_boxes, seeds=None, valid_sizes=None):
        """Sampled targets of every anchor.

        Args:
          gt_boxes: float32 ``[B, G, 4]`` yxyx network pixels, validated (padding rows of -1 allowed).
          seeds: int ``[B, 2]`` stateless seeds; default ``self.seeds(gt_boxes)``.
          valid_sizes: optional ``[B, 2]`` unpadded ``(h, w)`` per image: anchors of the padding are -1.

        Returns:
          dict: ``rpn_labels`` int32 ``[B, A]`` in {1, 0, -1} (sampled) and ``rpn_deltas`` float32 ``[B, A, 4]``
          (each anchor's deltas to its matched GT box; zeros where there is none).
        """
        seeds = self.seeds(gt_boxes) if seeds is None else tf.reshape(tf.cast(seeds, tf.int64), [-1, 2])
        # Everything runs on the inside anchors only; outside anchors get -1 and zero deltas.
        labels, deltas = self.inside_targets(gt_boxes, valid_sizes)
        if self.config.sampling == "none":
            sampled = labels
        else:
            sampled = sample_balanced(labels, seeds, self.config.samples_per_image, self.config.positive_fraction)
        return {"rpn_labels": self.matcher.scatter_to_all(sampled, IGNORE),
                "rpn_deltas": self.matcher.scatter_to_all(deltas, 0.0)}
