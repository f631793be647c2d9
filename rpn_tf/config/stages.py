"""Configs of the stages after the anchors: targets, proposals, ROI sampling."""

from __future__ import annotations

import dataclasses
import math
from typing import Tuple, Union

from rpn_tf.config.anchors import DEFAULT_RATIOS  # noqa: F401
from rpn_tf.config.fields import box_coder_field as _box_coder
from rpn_tf.config.fields import fraction_field as _fraction
from rpn_tf.config.fields import positive_int_field as _positive_int
from rpn_tf.config.fields import seed_field as _seed
from rpn_tf.ops.box_coder import BoxCoder
from rpn_tf.ops.box_ops import BOX_FORMATS
NMS_IMPLEMENTATIONS = ("auto", "padded", "combined")
SAMPLING_MODES = ("balanced", "none")
TARGET_FORMATS = ("dense", "sparse")
IMPLEMENTATIONS = ("auto", "native", "tf")


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """How GT boxes become RPN training targets (the article's rules and sampling) and how GT arrives.

    Attributes:
      positive_iou: an anchor with max IoU ≥ this is positive (0.7).
      negative_iou: an anchor with max IoU < this is negative (0.3).
      allowed_border: anchors crossing the image border by more than this many pixels are ignored (0);
        a negative value keeps all anchors.
      samples_per_image: anchors sampled per image for the loss (256).
      positive_fraction: largest share of positives in the sample (0.5).
      sampling: ``"balanced"`` (the article's random 256 at ≤ 50 % positives) or ``"none"`` (every labeled anchor
        is a target: for the focal loss over all anchors, or in-graph hard-negative mining in ``RPNModel``).
      box_coder: the ``BoxCoder`` of the regression targets (weights 1, 1, 1, 1, as in the article); the model
        decodes its predictions with the same one.
      box_format: format of the GT boxes given to the encoder: ``"yxyx"``, ``"xyxy"`` or ``"xywh"``.
      normalized_boxes: whether those boxes are in ``[0, 1]`` units of the image height / width.
      max_boxes: GT boxes are padded to this count in the encoder's output (more raises an error).
      min_gt_size: GT boxes whose height or width on the canvas is below this many pixels (1) are ignored by
        matching (neither matched nor forcing a positive) and counted in the encoder's ``num_ignored_boxes``.
      target_format: ``"dense"`` (default): ``rpn_labels`` ``[A]`` and ``rpn_deltas`` ``[A, 4]`` for every anchor;
        ``"sparse"``: only the ``samples_per_image`` sampled anchors — ``rpn_sample_indices``, ``rpn_sample_labels``
        ``[S]`` and ``rpn_sample_deltas`` ``[S, 4]`` (-1 / zeros past the sample), ~5 KB per image instead of
        ~450 KB; ``RPNModel``'s loss gathers its predictions at those indices. Needs ``sampling="balanced"``.
      seed: ``None`` for fresh random samples on every call; an int makes the sample a deterministic function of
        ``(seed, padded GT boxes)``, so every pass over a dataset gives identical targets.
      validate: check GT boxes for NaN/Inf and inverted boxes (``InvalidArgumentError`` naming the problem).
      implementation: how the targets are computed — ``"auto"`` (default): core TensorFlow ops, unless the
        native kernels are switched on process-wide (``rpn_tf.ops.native.enable()`` or ``RPN_TF_NATIVE=1``), then
        those in the encoder's ``dataset.map`` transform (``__call__``); ``"native"``: the native CPU kernels
        (``rpn_tf.ops.native``: built once per machine with the system compiler, cached, bit-identical targets,
        several times faster on CPU-bound input hosts) in ``__call__`` and ``encode`` — a one-line
        ``RuntimeError`` if they cannot be had; ``"tf"``: the TensorFlow ops everywhere. ``encode`` /
        ``label_anchors`` use the TensorFlow ops unless ``"native"``: they also run inside models, on accelerators
        and under XLA, where only the TensorFlow ops work.
    """

    positive_iou: float = 0.7
    negative_iou: float = 0.3
    allowed_border: float = 0.0
    samples_per_image: int = 256
    positive_fraction: float = 0.5
    sampling: str = "balanced"
    box_coder: BoxCoder = BoxCoder()
    box_format: str = "yxyx"
    normalized_boxes: bool = False
    max_boxes: int = 100
    min_gt_size: float = 1.0
    seed: Union[int, None] = None
    validate: bool = True
    target_format: str = "dense"
    implementation: str = "auto"

    def __post_init__(self):
        owner = "TargetConfig"
        if self.target_format not in TARGET_FORMATS:
            raise ValueError(f"TargetConfig.target_format must be one of {TARGET_FORMATS}, got "
                             f"{self.target_format!r}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"TargetConfig.implementation must be one of {IMPLEMENTATIONS}, got "
                             f"{self.implementation!r}")
        if self.target_format == "sparse" and self.sampling == "none":
            raise ValueError("TargetConfig(target_format='sparse') needs sampling='balanced': with sampling='none' "
                             "every labeled anchor is a target, which is the dense format")
        negative_iou = _fraction(owner, "negative_iou", self.negative_iou)
        positive_iou = _fraction(owner, "positive_iou", self.positive_iou)
        if negative_iou > positive_iou:
            raise ValueError(f"TargetConfig needs negative_iou <= positive_iou, got negative_iou={negative_iou}, "
                             f"positive_iou={positive_iou}")
        if not isinstance(self.allowed_border, (int, float)) or not math.isfinite(self.allowed_border):
            raise ValueError(f"TargetConfig.allowed_border must be a finite number, got {self.allowed_border!r}")
        if not isinstance(self.min_gt_size, (int, float)) or not 0 <= self.min_gt_size < math.inf:
            raise ValueError(f"TargetConfig.min_gt_size must be a finite number >= 0, got {self.min_gt_size!r}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"TargetConfig.sampling must be one of {SAMPLING_MODES}, got {self.sampling!r}")
        if self.box_format not in BOX_FORMATS:
            raise ValueError(f"TargetConfig.box_format must be one of {BOX_FORMATS}, got {self.box_format!r}")
        for name, value in (("positive_iou", positive_iou), ("negative_iou", negative_iou),
                            ("allowed_border", float(self.allowed_border)),
                            ("samples_per_image", _positive_int(owner, "samples_per_image", self.samples_per_image)),
                            ("positive_fraction", _fraction(owner, "positive_fraction", self.positive_fraction)),
                            ("box_coder", _box_coder(owner, self.box_coder)),
                            ("normalized_boxes", bool(self.normalized_boxes)),
                            ("max_boxes", _positive_int(owner, "max_boxes", self.max_boxes)),
                            ("seed", _seed(owner, self.seed)), ("validate", bool(self.validate))):
            object.__setattr__(self, name, value)


@dataclasses.dataclass(frozen=True)
class ProposalConfig:
    """Proposal generation settings; the defaults are the article's (train) and the paper's code (test).

    Attributes:
      pre_nms_top_k_train / pre_nms_top_k_test: boxes kept by score before NMS (12 000 / 6 000); with several
        anchor levels (FPN), per level.
      post_nms_top_k_train / post_nms_top_k_test: proposals kept after NMS (2 000 / 300).
      nms_iou: NMS IoU threshold (0.7).
      min_size: boxes with height or width below this many input pixels are dropped (16).
      per_level_nms: with several anchor levels (FPN), NMS within each level, as torchvision and detectron2 do
        (``True``, default), or one NMS over the candidates of all levels (``False``: a box also suppresses
        overlapping boxes of other levels — fewer duplicates of one object across levels).
      top_k_before_min_size: the pre-NMS top k taken among all boxes, then the small ones dropped (torchvision's
        ``filter_proposals``: fewer candidates when small boxes score high); ``False`` (default): small boxes are
        ranked last, so the top k holds boxes of ``min_size`` or more where there are enough.
      nms: ``"padded"`` (rpn-tf's pure-TensorFlow NMS: compiles under XLA, where it is the faster one),
        ``"combined"`` (``tf.image.combined_non_max_suppression``: no XLA kernel, faster without XLA on CPU) or
        ``"auto"`` (default): ``RPNModel`` uses ``"padded"`` when its steps are XLA-compiled
        (``model.jit_compile``) and ``"combined"`` otherwise; a direct ``generate_proposals`` call uses
        ``"combined"``. Both compute the same greedy NMS; timings in ``docs/performance.md``.
    """

    pre_nms_top_k_train: int = 12000
    post_nms_top_k_train: int = 2000
    pre_nms_top_k_test: int = 6000
    post_nms_top_k_test: int = 300
    nms_iou: float = 0.7
    min_size: float = 16.0
    per_level_nms: bool = True
    nms: str = "auto"
    top_k_before_min_size: bool = False

    def __post_init__(self):
        object.__setattr__(self, "top_k_before_min_size", bool(self.top_k_before_min_size))
        for name in ("pre_nms_top_k_train", "post_nms_top_k_train", "pre_nms_top_k_test", "post_nms_top_k_test"):
            object.__setattr__(self, name, _positive_int("ProposalConfig", name, getattr(self, name)))
        object.__setattr__(self, "nms_iou", _fraction("ProposalConfig", "nms_iou", self.nms_iou, low_open=True))
        if not isinstance(self.min_size, (int, float)) or not 0 <= self.min_size < math.inf:
            raise ValueError(f"ProposalConfig.min_size must be a finite number >= 0, got {self.min_size!r}")
        if self.nms not in NMS_IMPLEMENTATIONS:
            raise ValueError(f"ProposalConfig.nms must be one of {NMS_IMPLEMENTATIONS}, got {self.nms!r}")

    @classmethod
    def fpn(cls, **overrides) -> "ProposalConfig":
        """detectron2's FPN RPN counts: pre-NMS top 2 000 (train) / 1 000 (test) *per level*, post-NMS 1 000 / 1 000
        in all; the rest as the article's. ``RPNModel`` uses it for a multi-level backbone unless told otherwise."""
        return cls(**{"pre_nms_top_k_train": 2000, "post_nms_top_k_train": 1000, "pre_nms_top_k_test": 1000,
                      "post_nms_top_k_test": 1000, **overrides})

    @classmethod
    def torchvision(cls, **overrides) -> "ProposalConfig":
        """torchvision's ``fasterrcnn_resnet50_fpn`` RPN: 2 000 / 1 000 per level before NMS (train / test), 2 000 /
        1 000 after, NMS 0.7 within each level, ``min_size`` 1e-3, small boxes dropped after the top k."""
        return cls(**{"pre_nms_top_k_train": 2000, "post_nms_top_k_train": 2000, "pre_nms_top_k_test": 1000,
                      "post_nms_top_k_test": 1000, "min_size": 1e-3, "top_k_before_min_size": True, **overrides})

    def top_k(self, training: bool):
        """``(pre_nms_top_k, post_nms_top_k)`` for training or test."""
        if training:
            return self.pre_nms_top_k_train, self.post_nms_top_k_train
        return self.pre_nms_top_k_test, self.post_nms_top_k_test


@dataclasses.dataclass(frozen=True)
class RoiSamplerConfig:
    """Second-stage (Fast R-CNN) ROI sampling: the article's 128 ROIs at up to 25 % positives.

    Attributes:
      num_samples: ROIs per image (128).
      positive_fraction: largest share of positives (0.25).
      positive_iou: a candidate with max IoU ≥ this is positive (0.5).
      negative_iou_range: ``[low, high)`` max-IoU range of background candidates ((0.0, 0.5)).
      append_gt_boxes: add the GT boxes to the candidates (True), as Faster R-CNN does.
      box_coder: ``BoxCoder`` of the ROI regression targets (weights 10, 10, 5, 5).
      seed: ``None`` (fresh samples each call) or an int (a function of the seed and the GT boxes).
    """

    num_samples: int = 128
    positive_fraction: float = 0.25
    positive_iou: float = 0.5
    negative_iou_range: Tuple[float, float] = (0.0, 0.5)
    append_gt_boxes: bool = True
    box_coder: BoxCoder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    seed: Union[int, None] = None

    def __post_init__(self):
        owner = "RoiSamplerConfig"
        try:
            low, high = (float(v) for v in self.negative_iou_range)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{owner}.negative_iou_range must be (low, high), got {self.negative_iou_range!r}") \
                from error
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"{owner}.negative_iou_range must satisfy 0 <= low <= high <= 1, got {(low, high)}")
        for name, value in (("num_samples", _positive_int(owner, "num_samples", self.num_samples)),
                            ("positive_fraction", _fraction(owner, "positive_fraction", self.positive_fraction)),
                            ("positive_iou", _fraction(owner, "positive_iou", self.positive_iou, low_open=True)),
                            ("negative_iou_range", (low, high)), ("append_gt_boxes", bool(self.append_gt_boxes)),
                            ("box_coder", _box_coder(owner, self.box_coder)), ("seed", _seed(owner, self.seed))):
            object.__setattr__(self, name, value)


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
    """Second-stage post-processing (``FasterRCNN``): class-specific boxes → per-class NMS → final detections.
    Defaults are detectron2's / torchvision's (the article stops before stage two).

    Attributes:
      score_threshold: detections scoring below this are dropped (0.05).
      nms_iou: per-class NMS IoU threshold (0.5).
      max_detections: detections kept per image, over all classes (100).
      max_detections_per_class: kept per class before the total cut (100).
      min_size: class boxes (after decoding and clipping) narrower or lower than this many canvas pixels are
        dropped before NMS (0.01: torchvision's ``remove_small_boxes``; only degenerate boxes).
      nms: ``"combined"`` (``tf.image.combined_non_max_suppression``: per-class NMS, no XLA kernel), ``"padded"``
        (rpn-tf's XLA-compilable NMS over all classes at once, boxes of different classes never suppressing each
        other) or ``"auto"`` (default: ``"padded"`` when the model's steps are XLA-compiled).
    """

    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100
    max_detections_per_class: int = 100
    min_size: float = 0.01
    nms: str = "auto"

    def __post_init__(self):
        owner = "DetectionConfig"
        object.__setattr__(self, "score_threshold", _fraction(owner, "score_threshold", self.score_threshold))
        object.__setattr__(self, "nms_iou", _fraction(owner, "nms_iou", self.nms_iou, low_open=True))
        for name in ("max_detections", "max_detections_per_class"):
            object.__setattr__(self, name, _positive_int(owner, name, getattr(self, name)))
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, (int, float)) or \
                not 0 <= self.min_size < float("inf"):
            raise ValueError(f"DetectionConfig.min_size must be a finite number >= 0, got {self.min_size!r}")
        object.__setattr__(self, "min_size", float(self.min_size))
        if self.nms not in NMS_IMPLEMENTATIONS:
            raise ValueError(f"DetectionConfig.nms must be one of {NMS_IMPLEMENTATIONS}, got {self.nms!r}")
