"""``BoxCoder``: one object that encodes boxes into regression deltas and decodes them back, with one set of weights.

Shape shorthand: A anchors (or proposals), G ground-truth boxes, B images.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Tuple

import numpy as np
import tensorflow as tf

from rpn_tf.ops.box_ops import decode_deltas, encode_deltas

# Largest log-scale change allowed when decoding dh/dw, as in the paper's code and torchvision.
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)


@dataclasses.dataclass(frozen=True)
class BoxCoder:
    """Encodes yxyx boxes relative to anchors as ``(dy, dx, dh, dw)`` and decodes them back.

    ``(dy, dx, dh, dw) = (wy·(gy−ay)/ah, wx·(gx−ax)/aw, wh·log(gh/ah), ww·log(gw/aw))`` on box centres and sizes.
    The same coder must encode the training targets and decode the predictions: the RPN uses weights (1, 1, 1, 1)
    (the article), the second-stage ROI targets (10, 10, 5, 5) (Faster R-CNN's code, torchvision, detectron2).

    Attributes:
      weights: ``(wy, wx, wh, ww)`` multipliers, finite and positive.
      scale_clip: on decoding, ``dh / wh`` and ``dw / ww`` are clamped to at most this (``log(1000 / 16)``), so
        that ``exp`` cannot overflow on wild predictions.
    """

    weights: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    scale_clip: float = BBOX_XFORM_CLIP

    def __post_init__(self):
        try:
            weights = tuple(float(w) for w in self.weights)
        except (TypeError, ValueError) as error:
            raise ValueError(f"BoxCoder.weights must be 4 numbers, got {self.weights!r}") from error
        if len(weights) != 4 or any(not math.isfinite(w) or w <= 0 for w in weights):
            raise ValueError(f"BoxCoder.weights must be 4 finite positive numbers, got {self.weights!r}")
        if not self.scale_clip > 0:
            raise ValueError(f"BoxCoder.scale_clip must be positive, got {self.scale_clip!r}")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "scale_clip", float(self.scale_clip))

    def encode(self, boxes, anchors):
        """Deltas moving ``anchors`` onto ``boxes``: ``Tensor[..., 4]`` yxyx each (broadcastable) → ``[..., 4]``."""
        return encode_deltas(boxes, anchors, self.weights)

    def decode(self, deltas, anchors):
        """Boxes from ``deltas`` ``Tensor[..., 4]`` applied to ``anchors`` ``Tensor[..., 4]`` yxyx (not clipped)."""
        return decode_deltas(deltas, anchors, self.weights, self.scale_clip)

    # The encoder's fast path: per-anchor constants once, per-GT terms once, one subtract-multiply per anchor.
    def anchor_constants(self, anchors):
        """Per-anchor constants of ``encode_with_constants`` for fixed ``anchors`` (NumPy ``[A, 4]`` yxyx).

        Returns:
          float32 ``(terms [A, 4], scales [A, 4])``: ``(ay, ax, log ah, log aw)`` and ``(wy/ah, wx/aw, wh, ww)``.
        """
        anchors = np.asarray(anchors, np.float64).reshape(-1, 4)
        heights, widths = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
        terms = np.stack([anchors[:, 0] + 0.5 * heights, anchors[:, 1] + 0.5 * widths, np.log(heights),
                          np.log(widths)], axis=1)
        wy, wx, wh, ww = self.weights
        scales = np.stack([wy / heights, wx / widths, np.full_like(heights, wh), np.full_like(widths, ww)], axis=1)
        return tf.constant(terms, tf.float32), tf.constant(scales, tf.float32)

    @staticmethod
    def box_terms(boxes):
        """``(cy, cx, log h, log w)`` of yxyx ``boxes`` ``Tensor[..., 4]`` (``-inf`` logs for empty boxes)."""
        heights = boxes[..., 2] - boxes[..., 0]
        widths = boxes[..., 3] - boxes[..., 1]
        return tf.stack([boxes[..., 0] + 0.5 * heights, boxes[..., 1] + 0.5 * widths, tf.math.log(heights),
                         tf.math.log(widths)], axis=-1)

    @staticmethod
    def encode_with_constants(matched_box_terms, anchor_constants):
        """``encode`` from ``box_terms`` of each anchor's matched box ``[..., A, 4]`` and ``anchor_constants``."""
        terms, scales = anchor_constants
        return (matched_box_terms - terms) * scales
