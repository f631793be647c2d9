"""Anchor labeling: which anchors are objects (1), background (0) or ignored (-1).

Shape shorthand: B images, A anchors, A_in anchors inside the image, G ground-truth boxes per image (padded).

Speed: only anchors inside the image (8 940 of 22 500 at the defaults) are matched; outside anchors are -1 by
rule and are filled in afterwards with a constant gather, so the ``[G, A]`` work shrinks by 2.5×.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rpn_tf.ops.box_ops import iou_matrix

POSITIVE = 1
NEGATIVE = 0
IGNORE = -1
# IoUs within this *fraction* of a GT box's best IoU count as tied for "best anchor". The anchor grid makes exact
# ties common (a box centred between two anchors), and float32 rounding — which differs between CPU kernels, XLA
# fusions and GPUs — would otherwise break them at random. Relative, so that a tiny box (best IoU 1e-7) does not
# tie with every anchor it does not touch; a tied anchor also needs IoU > 0.
TIE_TOLERANCE = 4e-6
# GT rows matched at once in a padded batch (AnchorMatcher.match_inside): bounds the IoU intermediate to
# [B, GT_CHUNK, A_in] whatever the padding.
GT_CHUNK = 16


def anchors_inside_image(anchors, image_size, allowed_border=0.0):
    """Which anchors lie inside the image, up to ``allowed_border`` pixels past each edge.

    Args:
      anchors: ``[A, 4]`` yxyx (tensor or array).
      image_size: ``(height, width)``.
      allowed_border: pixels an anchor may cross the border by; a negative value keeps every anchor.

    Returns:
      bool ``Tensor[A]``.
    """
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    if allowed_border < 0:
        return tf.ones(tf.shape(anchors)[:1], tf.bool)
    height, width = float(image_size[0]), float(image_size[1])
    border = float(allowed_border)
    return ((anchors[:, 0] >= -border) & (anchors[:, 1] >= -border)
            & (anchors[:, 2] <= height + border) & (anchors[:, 3] <= width + border))


def valid_gt_mask(gt_boxes):
    """GT rows that take part in matching: finite with positive height and width.

    Padding rows (all -1) and zero-area boxes are ``False``. ``gt_boxes``: ``Tensor[..., G, 4]`` yxyx.
    """
    finite = tf.reduce_all(tf.math.is_finite(gt_boxes), axis=-1)
    return finite & (gt_boxes[..., 2] > gt_boxes[..., 0]) & (gt_boxes[..., 3] > gt_boxes[..., 1])


def best_gt_match(iou, gt_axis):
    """Best GT box per candidate from an IoU tensor whose unusable entries (invalid GT) are -1.

    Args:
      iou: float ``Tensor`` with the GT boxes along ``gt_axis`` (that axis may have size 0).
      gt_axis: the GT axis (1 or -1).

    Returns:
      ``(matched_gt_index, best_iou)`` with ``gt_axis`` reduced: the first GT of highest IoU, or -1 (and IoU -1)
      where no GT is valid.
    """
    axis = gt_axis % iou.shape.rank
    num_gt = tf.shape(iou, out_type=tf.int32)[axis]
    # max, then the first index reaching it: two cheap reductions instead of ArgMax, whose kernel is slow over an
    # outer axis (Eigen's tuple reducer; it was 11 % of the encoder's time). An empty GT axis gives -inf and -1.
    best_iou = tf.maximum(tf.reduce_max(iou, axis=axis), -1.0)
    index_shape = [1] * iou.shape.rank
    index_shape[axis] = -1
    gt_index = tf.reshape(tf.range(num_gt), index_shape)
    first = tf.reduce_min(tf.where(iou == tf.expand_dims(best_iou, axis), gt_index, num_gt), axis=axis)
    # In range even if a compiler computed the IoU differently for the max and for the comparison.
    first = tf.minimum(first, tf.maximum(num_gt - 1, 0))
    return tf.where(best_iou >= 0.0, first, -1), best_iou


def forced_positives(iou, gt_axis=1, anchor_axis=2):
    """bool: the anchors whose IoU with some GT box ties that box's best IoU over all anchors (the article's
    "highest IoU with a ground-truth box" rule), within a relative ``TIE_TOLERANCE``, where that best IoU is > 0.

    ``iou``: ``[B, G, A]`` (unusable entries -1); the result has ``gt_axis`` reduced.
    """
    gt_best_iou = tf.reduce_max(iou, axis=anchor_axis, keepdims=True)
    # One comparison per entry: a GT box whose best IoU is not positive gets an unreachable threshold, which is the
    # same as requiring IoU > 0 (a tie with a positive best is positive).
    threshold = tf.where(gt_best_iou > 0.0, gt_best_iou * (1.0 - TIE_TOLERANCE), float("inf"))
    return tf.reduce_any(iou >= threshold, axis=gt_axis)


def _scatter_to_all(values_inside, inverse_index, fill_value):
    """``[B, A_in, ...]`` values of the inside anchors → ``[B, A, ...]`` with ``fill_value`` elsewhere."""
    filler_shape = tf.concat([tf.shape(values_inside)[:1], [1], tf.shape(values_inside)[2:]], axis=0)
    filler = tf.fill(filler_shape, tf.constant(fill_value, values_inside.dtype))
    return tf.gather(tf.concat([values_inside, filler], axis=1), inverse_index, axis=1)


class AnchorMatcher:
    """Labels a fixed set of anchors against batches of GT boxes (the article's rules).

    Among inside anchors: max IoU < ``negative_iou`` → 0; then every anchor whose IoU with a GT box equals that
    box's highest IoU over the inside anchors (ties within a relative ``TIE_TOLERANCE`` included, only where that
    IoU > 0) → 1; then max IoU ≥
    ``positive_iou`` → 1; the rest → -1. Anchors crossing the border by more than ``allowed_border`` are -1.

    Padded images: with ``valid_sizes`` (the unpadded ``(h, w)`` of each image on the ``image_size`` canvas), the
    border rule applies to the valid region — an anchor crossing it is -1, as is every anchor whose feature cell
    lies in the padding (the anchors an unpadded image of that size would not have) — so a padded image is labeled
    exactly as the same image unpadded.

    Args:
      anchors: ``[A, 4]`` yxyx anchors, a NumPy array or an eager tensor (they are constants of the graph).
      image_size: ``(height, width)``.
      allowed_border: see ``anchors_inside_image``.
      positive_iou, negative_iou: the thresholds (0.7, 0.3).
      cell_origins: ``[A, 2]`` top-left of each anchor's feature cell (``anchor_cell_origins``); needed only for
        ``valid_sizes`` with a negative ``allowed_border``.
    """

    def __init__(self, anchors, image_size, allowed_border=0.0, positive_iou=0.7, negative_iou=0.3,
                 cell_origins=None):
        anchors = np.asarray(anchors, dtype=np.float32).reshape(-1, 4)
        self.allowed_border = float(allowed_border)
        self.num_anchors = len(anchors)
        self.positive_iou = float(positive_iou)
        self.negative_iou = float(negative_iou)
        inside = anchors_inside_image(anchors, image_size, allowed_border).numpy()
        inside_index = np.flatnonzero(inside)
        self.num_inside = len(inside_index)
        # Position of every anchor in the inside list; outside anchors point at a filler slot.
        inverse = np.full(self.num_anchors, self.num_inside, dtype=np.int32)
        inverse[inside_index] = np.arange(self.num_inside, dtype=np.int32)
        self._inside_mask = tf.constant(inside)
        self.inside_index = tf.constant(inside_index.astype(np.int32))  # (A_in,): anchor index of each inside anchor
        self._inverse_index = tf.constant(inverse)
        self._inside_anchors = tf.constant(anchors[inside_index])
        self._inside_cell_origins = None if cell_origins is None else \
            tf.constant(np.asarray(cell_origins, np.float32).reshape(-1, 2)[inside_index])

    @property
    def inside_mask(self) -> tf.Tensor:
        """bool ``Tensor[A]``: anchors that take part in matching."""
        return self._inside_mask

    @property
    def inside_anchors(self) -> tf.Tensor:
        """float32 ``Tensor[A_in, 4]``: the anchors that take part in matching, in anchor order."""
        return self._inside_anchors

    def scatter_to_all(self, values_inside, fill_value):
        """``[B, A_in, ...]`` per-inside-anchor values → ``[B, A, ...]``, ``fill_value`` for outside anchors."""
        return _scatter_to_all(values_inside, self._inverse_index, fill_value)

    def inside_iou(self, gt_boxes):
        """IoU of every GT box with every inside anchor: float32 ``Tensor[B, G, A_in]``."""
        return iou_matrix(gt_boxes, self._inside_anchors[None])

    def inside_valid_region(self, valid_sizes):
        """bool ``[B, A_in]``: inside anchors that belong to the valid (unpadded) region of each image.

        ``valid_sizes``: ``Tensor[B, 2]`` ``(h, w)`` of each image's unpadded part of the canvas.
        """
        valid_sizes = tf.cast(valid_sizes, tf.float32)
        height, width = valid_sizes[:, 0:1], valid_sizes[:, 1:2]  # (B, 1)
        anchors = self._inside_anchors
        if self.allowed_border >= 0:
            border = self.allowed_border
            return ((anchors[None, :, 2] <= height + border) & (anchors[None, :, 3] <= width + border))
        if self._inside_cell_origins is None:
            raise ValueError("AnchorMatcher needs cell_origins for valid_sizes with a negative allowed_border")
        origins = self._inside_cell_origins
        return (origins[None, :, 0] < height) & (origins[None, :, 1] < width)

    def match_inside(self, gt_boxes, gt_valid=None, valid_sizes=None):
        """Labels of the inside anchors only.

        Args:
          gt_boxes: float32 ``Tensor[B, G, 4]`` yxyx (G may be 0).
          gt_valid: bool ``Tensor[B, G]``; defaults to ``valid_gt_mask(gt_boxes)``.
          valid_sizes: optional ``Tensor[B, 2]``: unpadded ``(h, w)`` of each image (see the class docstring).

        Returns:
          ``(labels, matched_gt_index, max_iou)``, each ``Tensor[B, A_in]`` (see ``__call__``).

        A padded batch (a static G above ``GT_CHUNK``, e.g. the encoder's ``max_boxes`` rows labelled in a model's
        step) is matched ``GT_CHUNK`` rows at a time, up to its last usable row: the IoU is never built for every
        padded row × every anchor (``[B, 100, A_in]``, ~450 MB at 800² with a pyramid and batch 8), and the shapes
        stay static (an XLA-compiled step compiles once, whatever the number of boxes).
        """
        gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
        if gt_valid is None:
            gt_valid = valid_gt_mask(gt_boxes)
        anchor_valid = None if valid_sizes is None else self.inside_valid_region(valid_sizes)  # (B, A_in)
        if gt_boxes.shape[1] is not None and gt_boxes.shape[1] > GT_CHUNK:
            matched_gt_index, best_iou, forced = self._match_in_chunks(gt_boxes, gt_valid, anchor_valid)
        else:  # the tf.data path (one image's real boxes) or a small batch: one IoU matrix
            iou = self._usable_iou(gt_boxes, gt_valid, anchor_valid)  # (B, G, A_in)
            matched_gt_index, best_iou = best_gt_match(iou, gt_axis=1)  # (B, A_in); -1 without valid GT
            # Each valid GT box's best IoU over the inside anchors; every anchor reaching it is forced positive.
            forced = forced_positives(iou)  # (B, A_in)
        max_iou = tf.maximum(best_iou, 0.0)
        labels = tf.where(max_iou < self.negative_iou, NEGATIVE, IGNORE)
        labels = tf.where(forced | (max_iou >= self.positive_iou), POSITIVE, labels)
        if anchor_valid is not None:  # anchors of the padding are outside anchors
            labels = tf.where(anchor_valid, labels, IGNORE)
            matched_gt_index = tf.where(anchor_valid, matched_gt_index, -1)
            max_iou = tf.where(anchor_valid, max_iou, 0.0)
        return labels, matched_gt_index, max_iou

    def _usable_iou(self, gt_boxes, gt_valid, anchor_valid):
        """``[B, G, A_in]`` IoU with -1 where a GT row is not usable or an anchor lies in the padding."""
        iou = self.inside_iou(gt_boxes)

        def masked():
            usable = gt_valid[:, :, None]
            if anchor_valid is not None:
                usable &= anchor_valid[:, None, :]
            return tf.where(usable, iou, -1.0)

        # The usual case — every GT box usable, no padding anchors — skips the mask (a broadcast select over the
        # whole IoU matrix).
        all_usable = tf.reduce_all(gt_valid)
        if anchor_valid is not None:
            all_usable &= tf.reduce_all(anchor_valid)
        return tf.cond(all_usable, lambda: tf.identity(iou), masked)

    def _match_in_chunks(self, gt_boxes, gt_valid, anchor_valid):
        """``best_gt_match`` and ``forced_positives`` of a padded batch, ``GT_CHUNK`` GT rows at a time: a first pass
        keeps each anchor's best IoU and GT (the first on ties) and each GT row's best IoU over the anchors, a second
        recomputes each chunk's IoU to find the anchors tying those bests. Rows after the last usable one of every
        image are never visited."""
        num_gt = gt_boxes.shape[1]
        num_chunks_total = -(-num_gt // GT_CHUNK)
        padding = num_chunks_total * GT_CHUNK - num_gt
        boxes = tf.pad(gt_boxes, [[0, 0], [0, padding], [0, 0]], constant_values=-1.0)
        valid = tf.pad(gt_valid, [[0, 0], [0, padding]])
        rows = tf.range(1, num_gt + padding + 1)
        last_usable = tf.reduce_max(tf.where(tf.reduce_any(valid, axis=0), rows, 0))
        num_chunks = (last_usable + GT_CHUNK - 1) // GT_CHUNK

        def chunk_iou(index):
            rows = index * GT_CHUNK + tf.range(GT_CHUNK)  # a gather keeps the static shapes (XLA, while_loop)
            chunk_boxes, chunk_valid = tf.gather(boxes, rows, axis=1), tf.gather(valid, rows, axis=1)
            return self._usable_iou(chunk_boxes, chunk_valid, anchor_valid)  # (B, GT_CHUNK, A_in)

        def best_pass(index, best_iou, matched, gt_best):
            iou = chunk_iou(index)
            chunk_matched, chunk_best = best_gt_match(iou, gt_axis=1)
            better = chunk_best > best_iou  # strictly: an earlier GT keeps a tie
            best_iou = tf.where(better, chunk_best, best_iou)
            matched = tf.where(better, chunk_matched + index * GT_CHUNK, matched)
            gt_best = tf.tensor_scatter_nd_update(
                tf.transpose(gt_best), (index * GT_CHUNK + tf.range(GT_CHUNK))[:, None],
                tf.transpose(tf.reduce_max(iou, axis=2)))
            return index + 1, best_iou, matched, tf.transpose(gt_best)

        start_best = -tf.ones_like(boxes[:, :1, 0]) * tf.ones([self.num_inside])  # (B, A_in), B static if known
        start_matched = tf.cast(start_best, tf.int32)
        start_gt_best = -tf.ones_like(boxes[..., 0])
        _, best_iou, matched, gt_best = tf.while_loop(
            lambda index, *_: index < num_chunks, best_pass, (tf.constant(0), start_best, start_matched,
                                                             start_gt_best))

        def forced_pass(index, forced):
            chunk_best = tf.gather(gt_best, index * GT_CHUNK + tf.range(GT_CHUNK), axis=1)
            threshold = tf.where(chunk_best > 0.0, chunk_best * (1.0 - TIE_TOLERANCE), float("inf"))
            return index + 1, forced | tf.reduce_any(chunk_iou(index) >= threshold[:, :, None], axis=1)

        _, forced = tf.while_loop(lambda index, _: index < num_chunks, forced_pass,
                                  (tf.constant(0), tf.zeros_like(start_best, tf.bool)))
        return tf.where(best_iou >= 0.0, matched, -1), best_iou, forced

    def __call__(self, gt_boxes, gt_valid=None, valid_sizes=None):
        """Labels every anchor.

        Args:
          gt_boxes: float32 ``Tensor[B, G, 4]`` yxyx (G may be 0).
          gt_valid: bool ``Tensor[B, G]``; defaults to ``valid_gt_mask(gt_boxes)``.
          valid_sizes: optional ``Tensor[B, 2]`` unpadded ``(h, w)`` per image.

        Returns:
          labels: int32 ``Tensor[B, A]`` in {1, 0, -1}.
          matched_gt_index: int32 ``Tensor[B, A]``: for inside anchors of an image with a valid GT box, the GT
            box of highest IoU (the first on ties; a forced anchor keeps its own argmax); -1 for outside anchors
            and images without valid GT.
          max_iou: float32 ``Tensor[B, A]``: that highest IoU (0 where there is none).
        """
        labels, matched_gt_index, max_iou = self.match_inside(gt_boxes, gt_valid, valid_sizes)
        return (self.scatter_to_all(labels, IGNORE), self.scatter_to_all(matched_gt_index, -1),
                self.scatter_to_all(max_iou, 0.0))


def label_anchors(anchors, gt_boxes, image_size, allowed_border=0.0, positive_iou=0.7, negative_iou=0.3,
                  gt_valid=None):
    """Functional form of ``AnchorMatcher``: ``(labels, matched_gt_index, max_iou)``, each ``[B, A]``.

    ``anchors`` must be concrete (NumPy or eager); ``gt_boxes`` is ``Tensor[B, G, 4]`` yxyx. Build an
    ``AnchorMatcher`` once instead when labeling many images.
    """
    matcher = AnchorMatcher(anchors, image_size, allowed_border, positive_iou, negative_iou)
    return matcher(gt_boxes, gt_valid)
