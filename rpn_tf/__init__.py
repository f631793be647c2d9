"""rpn-tf: the Region Proposal Network of Faster R-CNN for TensorFlow 2 / Keras 3.

Sub-packages follow the data (see ``docs/architecture.md``):
  ``rpn_tf.config``    frozen configs of every stage (anchors, targets, proposals, ROI sampling)
  ``rpn_tf.ops``       pure TensorFlow: anchors → box ops / ``BoxCoder`` → matching → sampling → targets → NMS /
                       proposals → ROI sampling → ROI Align
  ``rpn_tf.data``      input adapters, tiling, and the ``RpnTargetEncoder`` ``dataset.map`` transform
  ``rpn_tf.modeling``  the RPN's parts (backbones, ``RpnHead``, ``RpnLoss``, ``ProposalGenerator``; ``rpn_parts``),
                       ``RPNModel`` (their assembly), metrics, ``fitting.train_model`` (the one training entry
                       point), and the detector on it: ``FasterRCNN`` = the RPN + ``RoiHeads`` (ROI Align,
                       ``BoxHead``, ROI sampling and losses, post-processing)
  ``rpn_tf.serving``   the served graph, the SavedModel exporter, the TF Serving client
  ``rpn_tf.tools``     the ``rpn-tf`` CLI, the demo, the deepforest training recipe
  ``rpn_tf.evaluation`` recall@N / AR@N and the recall waterfall; ``rpn_tf.coco_eval``: COCO AP / AR by pycocotools
Conventions (boxes ``[y1, x1, y2, x2]`` in absolute pixels, no +1, ratio = h / w) are in ``docs/conventions.md``.
"""

import os as _os
import sys as _sys

# Every name is imported when the package is (so that Keras finds RPNModel's registered class in
# ``keras.models.load_model`` after a plain ``import rpn_tf``) — except under rpn-tf's programs (``_is_cli``), which
# import what a command needs once its arguments are parsed (``rpn-tf --help`` does not start TensorFlow) and
# TensorFlow itself quietly (``tools.options.import_tensorflow``).
_LAZY = {
    "AnchorConfig": "rpn_tf.config",
    "AnchorMatcher": "rpn_tf.ops.matching",
    "BoxHead": "rpn_tf.modeling.box_head",
    "DetectionConfig": "rpn_tf.config",
    "FasterRCNN": "rpn_tf.modeling.faster_rcnn",
    "BoxCoder": "rpn_tf.ops.box_coder",
    "DistributedTrainer": "rpn_tf.modeling.distributed",
    "MultiLevelAnchorConfig": "rpn_tf.config",
    "ProposalConfig": "rpn_tf.config",
    "ProposalGenerator": "rpn_tf.modeling.proposal_generator",
    "ProposalRecall": "rpn_tf.modeling.metrics",
    "RPNModel": "rpn_tf.modeling.rpn_model",
    "ResizeConfig": "rpn_tf.config",
    "RoiHeads": "rpn_tf.modeling.roi_heads",
    "RoiSampler": "rpn_tf.ops.roi_sampling",
    "RoiSamplerConfig": "rpn_tf.config",
    "RpnHead": "rpn_tf.modeling.head",
    "RpnLoss": "rpn_tf.modeling.losses",
    "RpnTargetAssigner": "rpn_tf.ops.targets",
    "RpnTargetEncoder": "rpn_tf.data.encoder",
    "TargetConfig": "rpn_tf.config",
    "anchors_inside_image": "rpn_tf.ops.matching",
    "anchors_per_level": "rpn_tf.ops.anchors",
    "assign_levels": "rpn_tf.ops.roi_align",
    "box_ops": "rpn_tf.ops.box_ops",
    "clip_boxes": "rpn_tf.ops.box_ops",
    "convert_boxes": "rpn_tf.ops.box_ops",
    "decode_deltas": "rpn_tf.ops.box_ops",
    "encode_deltas": "rpn_tf.ops.box_ops",
    "evaluate_recall": "rpn_tf.evaluation",
    "generate_anchors": "rpn_tf.ops.anchors",
    "generate_proposals": "rpn_tf.ops.proposals",
    "iou_matrix": "rpn_tf.ops.box_ops",
    "label_anchors": "rpn_tf.ops.matching",
    "multilevel_roi_align": "rpn_tf.ops.roi_align",
    "num_anchors": "rpn_tf.ops.anchors",
    "padded_nms": "rpn_tf.ops.nms",
    "resize_to_canvas": "rpn_tf.data.resize",
    "sample_balanced": "rpn_tf.ops.sampling",
}

__version__ = "0.3.0"

__all__ = [
    "AnchorConfig",
    "AnchorMatcher",
    "BoxCoder",
    "BoxHead",
    "DetectionConfig",
    "DistributedTrainer",
    "FasterRCNN",
    "MultiLevelAnchorConfig",
    "ProposalConfig",
    "ProposalRecall",
    "ResizeConfig",
    "RPNModel",
    "RoiHeads",
    "RoiSampler",
    "RoiSamplerConfig",
    "RpnHead",
    "RpnTargetAssigner",
    "RpnTargetEncoder",
    "TargetConfig",
    "anchors_inside_image",
    "anchors_per_level",
    "assign_levels",
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
    "multilevel_roi_align",
    "num_anchors",
    "padded_nms",
    "resize_to_canvas",
    "sample_balanced",
]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rpn_tf' has no attribute {name!r}")
    import importlib

    value = importlib.import_module(module) if module.endswith("." + name) else \
        getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


_PROGRAMS = ("rpn_tf.tools.cli", "rpn_tf.tools.demo", "rpn_tf.tools.train_deepforest")


def _is_cli():
    """Whether this process is one of rpn-tf's programs (the ``rpn-tf`` script, ``cli.py``, or ``python -m`` of the
    CLI, the demo or the recipe): they import TensorFlow themselves, quietly."""
    program = _sys.argv[0] if _sys.argv and _sys.argv[0] else ""
    original = list(getattr(_sys, "orig_argv", []))
    as_module = any(a == "-m" and b in _PROGRAMS for a, b in zip(original, original[1:]))
    return _os.path.basename(program) == "rpn-tf" or program.endswith(_os.path.join("rpn_tf", "tools", "cli.py")) \
        or as_module


if not _is_cli():
    for _name in __all__:
        __getattr__(_name)
