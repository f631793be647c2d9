"""From RPN outputs to proposals: decode → clip → min size → pre-NMS top-k → NMS → post-NMS top-k.

Shape shorthand: B images, A anchors, K = ``pre_nms_top_k``, N = ``post_nms_top_k`` proposals.
"""

from __future__ import annotations

import tensorflow as tf

from rpn_tf.config import ProposalConfig, validate_image_size
from rpn_tf.ops import box_ops
from rpn_tf.ops.box_coder import BoxCoder
from rpn_tf.ops.nms import padded_nms


def generate_proposals(anchors, objectness_logits, deltas, image_size, config=None, training=False,
                       box_coder=None):
    """Turns RPN outputs into padded proposals.

    Args:
      anchors: float32 ``Tensor[A, 4]`` yxyx.
      objectness_logits: ``Tensor[B, A]``.
      deltas: ``Tensor[B, A, 4]``.
      image_size: ``(height, width)`` of the network input; boxes are clipped to it.
      config: ``ProposalConfig`` (defaults: the article's).
      training: selects the train or test top-k counts.
      box_coder: the ``BoxCoder`` the targets were encoded with (default ``BoxCoder()``, weights 1).

    Returns:
      dict with ``boxes`` float32 ``[B, N, 4]`` yxyx (zeros past ``num_proposals``), ``scores`` float32
      ``[B, N]`` (sigmoid probabilities, 0 past ``num_proposals``) and ``num_proposals`` int32 ``[B]``.
      With ``config.nms == "padded"`` the whole function compiles under XLA (``"auto"`` means ``"combined"`` here).
    """
    config = config or ProposalConfig()
    box_coder = box_coder or BoxCoder()
    image_size = validate_image_size(image_size)
    pre_nms_top_k, post_nms_top_k = config.top_k(training)
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    num_anchors = anchors.shape[0]
    logits = tf.cast(objectness_logits, tf.float32)
    deltas = tf.cast(deltas, tf.float32)

    boxes = box_coder.decode(deltas, anchors[None])  # (B, A, 4)
    boxes = box_ops.clip_boxes(boxes, image_size)
    heights = boxes[..., 2] - boxes[..., 0]
    widths = boxes[..., 3] - boxes[..., 1]
    scores = tf.sigmoid(logits)
    # Small boxes get score -1, so that top-k ranks them last and NMS never keeps them.
    keep = (heights >= config.min_size) & (widths >= config.min_size)
    scores = tf.where(keep, scores, -1.0)

    k = min(pre_nms_top_k, num_anchors)
    top_scores, top_index = tf.math.top_k(scores, k=k)  # (B, K), sorted
    top_boxes = tf.gather(boxes, top_index, batch_dims=1)  # (B, K, 4)
    if config.nms == "padded":
        nms_boxes, nms_scores, num_valid = padded_nms(top_boxes, top_scores, post_nms_top_k, config.nms_iou,
                                                      valid=top_scores > 0.0)
    else:
        nms_boxes, nms_scores, _, num_valid = tf.image.combined_non_max_suppression(
            top_boxes[:, :, None, :], top_scores[..., None],
            max_output_size_per_class=post_nms_top_k, max_total_size=post_nms_top_k,
            iou_threshold=config.nms_iou, score_threshold=0.0, pad_per_class=False, clip_boxes=False)
    return {"boxes": nms_boxes, "scores": nms_scores, "num_proposals": tf.cast(num_valid, tf.int32)}
