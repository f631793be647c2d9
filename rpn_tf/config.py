"""Frozen configuration dataclasses, one per pipeline stage, holding the article's defaults.

``AnchorConfig`` / ``MultiLevelAnchorConfig`` (anchors), ``TargetConfig`` (labeling, sampling, GT input format),
``ProposalConfig`` (decode → NMS → top-k) and ``RoiSamplerConfig`` (second-stage ROI sampling). Every default is a
named field so users can see and override it; the values follow the reference article (Faster R-CNN's RPN on an
800×800 VGG16 feature map). Each config validates its fields once, in ``__post_init__``; the classes that use them
do not check again. See ``docs/conventions.md`` for the conventions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence, Tuple, Union

from rpn_tf.config_fields import box_coder_field as _box_coder
from rpn_tf.config_fields import config_from_kwargs, config_to_dict  # noqa: F401  (re-exported)
from rpn_tf.config_fields import fraction_field as _fraction
from rpn_tf.config_fields import positive_int_field as _positive_int
from rpn_tf.config_fields import seed_field as _seed
from rpn_tf.ops.box_coder import BBOX_XFORM_CLIP, BoxCoder  # noqa: F401  (BBOX_XFORM_CLIP re-exported)

BOX_FORMATS = ("yxyx", "xyxy", "xywh")
NMS_IMPLEMENTATIONS = ("auto", "padded", "combined")

# Shared defaults (the article's values), named once so every stage refers to the same number.
DEFAULT_IMAGE_SIZE = (800, 800)
DEFAULT_STRIDE = 16
DEFAULT_SCALES = (8.0, 16.0, 32.0)
DEFAULT_RATIOS = (0.5, 1.0, 2.0)


def _as_float_tuple(name: str, values) -> Tuple[float, ...]:
    try:
        result = tuple(float(v) for v in values)
    except TypeError as error:
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from error
    if not result:
        raise ValueError(f"{name} must not be empty")
    if any(not math.isfinite(v) or v <= 0 for v in result):
        raise ValueError(f"{name} must hold finite positive numbers, got {values!r}")
    return result


def validate_image_size(image_size) -> Tuple[int, int]:
    """Returns ``image_size`` as a ``(height, width)`` tuple of positive ints or raises ``ValueError``."""
    try:
        height, width = image_size
    except (TypeError, ValueError) as error:
        raise ValueError(f"image_size must be (height, width), got {image_size!r}") from error
    if int(height) != height or int(width) != width or height <= 0 or width <= 0:
        raise ValueError(f"image_size must hold two positive integers, got {image_size!r}")
    return int(height), int(width)


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    """Anchors of one feature-map level.

    An anchor of scale ``s`` and ratio ``r`` (``r = h / w``) centred on feature cell ``(i, j)`` has centre
    ``((i + 0.5) * stride, (j + 0.5) * stride)``, height ``stride * s * sqrt(r)`` and width ``stride * s / sqrt(r)``;
    its area is ``(stride * s) ** 2`` whatever the ratio.

    Attributes:
      stride: input pixels per feature-map cell (16 for VGG16 conv5_3).
      scales: anchor side lengths in units of ``stride`` (8, 16, 32 → 128, 256, 512 px at stride 16).
      ratios: aspect ratios ``h / w``.
    """

    stride: int = DEFAULT_STRIDE
    scales: Tuple[float, ...] = DEFAULT_SCALES
    ratios: Tuple[float, ...] = DEFAULT_RATIOS

    def __post_init__(self):
        if isinstance(self.stride, bool) or int(self.stride) != self.stride or self.stride <= 0:
            raise ValueError(f"AnchorConfig.stride must be a positive integer, got {self.stride!r}")
        object.__setattr__(self, "stride", int(self.stride))
        object.__setattr__(self, "scales", _as_float_tuple("AnchorConfig.scales", self.scales))
        object.__setattr__(self, "ratios", _as_float_tuple("AnchorConfig.ratios", self.ratios))

    @property
    def levels(self) -> Tuple["AnchorConfig", ...]:
        return (self,)

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.scales) * len(self.ratios)

    def feature_map_size(self, image_size) -> Tuple[int, int]:
        """Feature-map ``(rows, cols)`` for an input of ``image_size``: ``ceil(size / stride)``."""
        height, width = validate_image_size(image_size)
        return -(-height // self.stride), -(-width // self.stride)


@dataclasses.dataclass(frozen=True)
class MultiLevelAnchorConfig:
    """Anchors over several feature-map levels (FPN style).

    Anchors are concatenated level by level in the order given; within a level the order is the single-level
    one (row, column, ratio-major / scale-minor).
    """

    levels: Tuple[AnchorConfig, ...]

    def __post_init__(self):
        levels = tuple(self.levels)
        if not levels:
            raise ValueError("MultiLevelAnchorConfig.levels must hold at least one AnchorConfig")
        for level in levels:
            if not isinstance(level, AnchorConfig):
                raise TypeError(f"MultiLevelAnchorConfig.levels must hold AnchorConfig, got {type(level).__name__}")
        object.__setattr__(self, "levels", levels)

    @property
    def num_anchors_per_location(self) -> Tuple[int, ...]:
        return tuple(level.num_anchors_per_location for level in self.levels)


AnyAnchorConfig = Union[AnchorConfig, MultiLevelAnchorConfig]


def as_anchor_config(anchor_config) -> AnyAnchorConfig:
    """Accepts an ``AnchorConfig``, a ``MultiLevelAnchorConfig`` or a sequence of ``AnchorConfig`` levels."""
    if isinstance(anchor_config, (AnchorConfig, MultiLevelAnchorConfig)):
        return anchor_config
    if isinstance(anchor_config, Sequence) and not isinstance(anchor_config, str):
        return MultiLevelAnchorConfig(tuple(anchor_config))
    raise TypeError(
        "anchor_config must be an AnchorConfig, a MultiLevelAnchorConfig or a sequence of AnchorConfig, "
        f"got {type(anchor_config).__name__}"
    )


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
      box_coder: the ``BoxCoder`` of the regression targets (weights 1, 1, 1, 1, as in the article); the model
        decodes its predictions with the same one.
      box_format: format of the GT boxes given to the encoder: ``"yxyx"``, ``"xyxy"`` or ``"xywh"``.
      normalized_boxes: whether those boxes are in ``[0, 1]`` units of the image height / width.
      max_boxes: GT boxes are padded to this count in the encoder's output (more raises an error).
      seed: ``None`` for fresh random samples on every call; an int makes the sample a deterministic function of
        ``(seed, padded GT boxes)``, so every pass over a dataset gives identical targets.
      validate: check GT boxes for NaN/Inf and inverted boxes (``InvalidArgumentError`` naming the problem).
    """

    positive_iou: float = 0.7
    negative_iou: float = 0.3
    allowed_border: float = 0.0
    samples_per_image: int = 256
    positive_fraction: float = 0.5
    box_coder: BoxCoder = BoxCoder()
    box_format: str = "yxyx"
    normalized_boxes: bool = False
    max_boxes: int = 100
    seed: Union[int, None] = None
    validate: bool = True

    def __post_init__(self):
        owner = "TargetConfig"
        negative_iou = _fraction(owner, "negative_iou", self.negative_iou)
        positive_iou = _fraction(owner, "positive_iou", self.positive_iou)
        if negative_iou > positive_iou:
            raise ValueError(f"TargetConfig needs negative_iou <= positive_iou, got negative_iou={negative_iou}, "
                             f"positive_iou={positive_iou}")
        if not isinstance(self.allowed_border, (int, float)) or not math.isfinite(self.allowed_border):
            raise ValueError(f"TargetConfig.allowed_border must be a finite number, got {self.allowed_border!r}")
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
      pre_nms_top_k_train / pre_nms_top_k_test: boxes kept by score before NMS (12 000 / 6 000).
      post_nms_top_k_train / post_nms_top_k_test: proposals kept after NMS (2 000 / 300).
      nms_iou: NMS IoU threshold (0.7).
      min_size: boxes with height or width below this many input pixels are dropped (16).
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
    nms: str = "auto"

    def __post_init__(self):
        for name in ("pre_nms_top_k_train", "post_nms_top_k_train", "pre_nms_top_k_test", "post_nms_top_k_test"):
            object.__setattr__(self, name, _positive_int("ProposalConfig", name, getattr(self, name)))
        object.__setattr__(self, "nms_iou", _fraction("ProposalConfig", "nms_iou", self.nms_iou, low_open=True))
        if not isinstance(self.min_size, (int, float)) or not 0 <= self.min_size < math.inf:
            raise ValueError(f"ProposalConfig.min_size must be a finite number >= 0, got {self.min_size!r}")
        if self.nms not in NMS_IMPLEMENTATIONS:
            raise ValueError(f"ProposalConfig.nms must be one of {NMS_IMPLEMENTATIONS}, got {self.nms!r}")

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
