"""rpn-tf: the Region Proposal Network of Faster R-CNN for TensorFlow 2 / Keras 3.

Pipeline stages, one module each: ``anchors`` → ``box_ops`` → ``matching`` → ``sampling`` → ``targets``.
Conventions (boxes ``[y1, x1, y2, x2]`` in absolute pixels, no +1, ratio = h / w) are in ``docs/conventions.md``.
"""

from rpn_tf import box_ops
from rpn_tf.anchors import generate_anchors, num_anchors
from rpn_tf.box_ops import clip_boxes, convert_boxes, decode_deltas, encode_deltas, iou_matrix
from rpn_tf.config import AnchorConfig, MultiLevelAnchorConfig
from rpn_tf.metrics import ProposalRecall
from rpn_tf.model import RPNModel
from rpn_tf.proposals import ProposalConfig, generate_proposals
from rpn_tf.roi_sampling import RoiSampler
from rpn_tf.matching import AnchorMatcher, anchors_inside_image, label_anchors
from rpn_tf.sampling import sample_balanced
from rpn_tf.targets import RpnTargetEncoder

__version__ = "0.1.0"

__all__ = [
    "AnchorConfig",
    "MultiLevelAnchorConfig",
    "AnchorMatcher",
    "ProposalConfig",
    "ProposalRecall",
    "RPNModel",
    "RoiSampler",
    "RpnTargetEncoder",
    "anchors_inside_image",
    "box_ops",
    "clip_boxes",
    "convert_boxes",
    "decode_deltas",
    "encode_deltas",
    "generate_proposals",
    "generate_anchors",
    "iou_matrix",
    "label_anchors",
    "num_anchors",
    "sample_balanced",
]
