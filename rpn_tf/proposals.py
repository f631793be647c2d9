"""From RPN outputs to proposals: decode → clip → min size → pre-NMS top-k → NMS → post-NMS top-k.

Shape shorthand: B images, A anchors, N post-NMS proposals (``post_nms_top_k``).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from rpn_tf import box_ops
from rpn_tf.config import validate_image_size


@dataclasses.dataclass(frozen=True)
class ProposalConfig:
    """Proposal generation settings; the defaults are the article's (train) and the paper's code (test).

    Attributes:
      pre_nms_top_k_train / pre_nms_top_k_test: boxes kept by score before NMS (12 000 / 6 000).
      post_nms_top_k_train / post_nms_top_k_test: proposals kept after NMS (2 000 / 300).
      nms_iou: NMS IoU threshold (0.7).
      min_size: boxes with height or width below this many input pixels are dropped (16).
      delta_weights: weights used to encode the RPN deltas (1, 1, 1, 1).
    """

    pre_nms_top_k_train: int = 12000
    post_nms_top_k_train: int = 2000
    pre_nms_top_k_test: int = 6000
    post_nms_top_k_test: int = 300
    nms_iou: float = 0.7
    min_size: float = 16.0
    delta_weights: tuple = (1.0, 1.0, 1.0, 1.0)

    def __post_init__(self):
        for name in ("pre_nms_top_k_train", "post_nms_top_k_train", "pre_nms_top_k_test", "post_nms_top_k_test"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value <= 0:
                raise ValueError(f"ProposalConfig.{name} must be a positive integer, got {value!r}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"ProposalConfig.nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.min_size < 0:
            raise ValueError(f"ProposalConfig.min_size must be >= 0, got {self.min_size}")

    def top_k(self, training: bool):
        """``(pre_nms_top_k, post_nms_top_k)`` for training or test."""
        if training:
            return self.pre_nms_top_k_train, self.post_nms_top_k_train
        return self.pre_nms_top_k_test, self.post_nms_top_k_test


def generate_proposals(anchors, objectness_logits, deltas, image_size, config=None, training=False):
    """Turns RPN outputs into padded proposals.

    Args:
      anchors: float32 ``Tensor[A, 4]`` yxyx.
      objectness_logits: ``Tensor[B, A]``.
      deltas: ``Tensor[B, A, 4]``.
      image_size: ``(height, width)`` of the network input; boxes are clipped to it.
      config: ``ProposalConfig`` (defaults: the article's).
      training: selects the train or test top-k counts.

    Returns:
      dict with ``boxes`` float32 ``[B, N, 4]`` yxyx (zeros past ``num_proposals``), ``scores`` float32
      ``[B, N]`` (sigmoid probabilities, 0 past ``num_proposals``) and ``num_proposals`` int32 ``[B]``.
    """
    config = config or ProposalConfig()
    image_size = validate_image_size(image_size)
    pre_nms_top_k, post_nms_top_k = config.top_k(training)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    num_anchors = anchors.shape[0]
    logits = tf.cast(objectness_logits, tf.float32)
    deltas = tf.cast(deltas, tf.float32)

    boxes = box_ops.decode_deltas(deltas, anchors[None], config.delta_weights)  # (B, A, 4)
    boxes = box_ops.clip_boxes(boxes, image_size)
    heights = boxes[..., 2] - boxes[..., 0]
    widths = boxes[..., 3] - boxes[..., 1]
    scores = tf.sigmoid(logits)
    # Small boxes get score -1 so that top-k ranks them last and NMS's score threshold drops them.
    keep = (heights >= config.min_size) & (widths >= config.min_size)
    scores = tf.where(keep, scores, -1.0)

    k = min(pre_nms_top_k, num_anchors)
    top_scores, top_index = tf.math.top_k(scores, k=k)  # (B, k)
    top_boxes = tf.gather(boxes, top_index, batch_dims=1)  # (B, k, 4)
    nms_boxes, nms_scores, _, num_valid = tf.image.combined_non_max_suppression(
        top_boxes[:, :, None, :], top_scores[..., None],
        max_output_size_per_class=post_nms_top_k, max_total_size=post_nms_top_k,
        iou_threshold=config.nms_iou, score_threshold=0.0, pad_per_class=False, clip_boxes=False)
    return {"boxes": nms_boxes, "scores": nms_scores, "num_proposals": tf.cast(num_valid, tf.int32)}
