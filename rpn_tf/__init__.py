"""rpn-tf: the Region Proposal Network of Faster R-CNN for TensorFlow 2 / Keras 3.

Sub-packages follow the data (see ``docs/architecture.md``):
  ``rpn_tf.config``    frozen configs of every stage (anchors, targets, proposals, ROI sampling)
  ``rpn_tf.ops``       pure TensorFlow: anchors → box ops / ``BoxCoder`` → matching → sampling → targets → NMS /
                       proposals → ROI sampling
  ``rpn_tf.data``      input adapters, tiling, and the ``RpnTargetEncoder`` ``dataset.map`` transform
  ``rpn_tf.modeling``  backbones, ``RpnHead``, losses, metrics, ``RPNModel``
  ``rpn_tf.serving``   the served graph, the SavedModel exporter, the TF Serving client
  ``rpn_tf.tools``     the ``rpn-tf`` CLI, the demo, the deepforest training recipe
Conventions (boxes ``[y1, x1, y2, x2]`` in absolute pixels, no +1, ratio = h / w) are in ``docs/conventions.md``.
"""

from rpn_tf.config import AnchorConfig, MultiLevelAnchorConfig, ProposalConfig, ResizeConfig, RoiSamplerConfig, \
    TargetConfig
from rpn_tf.data.encoder import RpnTargetEncoder
from rpn_tf.data.resize import resize_to_canvas
from rpn_tf.evaluation import evaluate_recall
from rpn_tf.modeling.head import RpnHead
from rpn_tf.modeling.metrics import ProposalRecall
from rpn_tf.modeling.rpn_model import RPNModel
from rpn_tf.ops import box_ops
from rpn_tf.ops.anchors import anchors_per_level, generate_anchors, num_anchors
from rpn_tf.ops.box_coder import BoxCoder
from rpn_tf.ops.box_ops import clip_boxes, convert_boxes, decode_deltas, encode_deltas, iou_matrix
from rpn_tf.ops.matching import AnchorMatcher, anchors_inside_image, label_anchors
from rpn_tf.ops.nms import padded_nms
from rpn_tf.ops.proposals import generate_proposals
from rpn_tf.ops.roi_sampling import RoiSampler
from rpn_tf.ops.sampling import sample_balanced
from rpn_tf.ops.targets import RpnTargetAssigner

__version__ = "0.2.0"

__all__ = [
    "AnchorConfig",
    "AnchorMatcher",
    "BoxCoder",
    "MultiLevelAnchorConfig",
    "ProposalConfig",
    "ProposalRecall",
    "ResizeConfig",
    "RPNModel",
    "RoiSampler",
    "RoiSamplerConfig",
    "RpnHead",
    "RpnTargetAssigner",
    "RpnTargetEncoder",
    "TargetConfig",
    "anchors_inside_image",
    "anchors_per_level",
    "box_ops",
    "clip_boxes",
    "convert_boxes",
    "decode_deltas",
    "encode_deltas",
    "evaluate_recall",
    "generate_anchors",
    "generate_proposals",
    "iou_matrix",
    "label_anchors",
    "num_anchors",
    "padded_nms",
    "resize_to_canvas",
    "sample_balanced",
]
