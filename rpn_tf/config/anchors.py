"""Anchor configs (one level, several levels) and the image-size check."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence, Tuple, Union

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
    ``((i + offset) * stride, (j + offset) * stride)`` (``offset`` 0.5: the cell's centre, the article's), height
    ``stride * s * sqrt(r)`` and width ``stride * s / sqrt(r)``; its area is ``(stride * s) ** 2`` whatever the
    ratio.

    Attributes:
      stride: input pixels per feature-map cell (16 for VGG16 conv5_3).
      scales: anchor side lengths in units of ``stride`` (8, 16, 32 → 128, 256, 512 px at stride 16).
      ratios: aspect ratios ``h / w``.
      offset: anchor centres at ``(i + offset) · stride`` (0.5, the cell's centre; torchvision's anchors: 0, the
        cell's top-left corner).
      round_half_extents: the half height and width of each anchor rounded to integers, half to even (torchvision's
        ``AnchorGenerator``; ``False``: exact values, the article's).
      stride_from_grid: the step between cells is ``canvas size // map size`` per axis instead of ``stride``
        (torchvision computes it so: 61 px instead of 64 on P6 of an 800-px-high canvas).
    """

    stride: int = DEFAULT_STRIDE
    scales: Tuple[float, ...] = DEFAULT_SCALES
    ratios: Tuple[float, ...] = DEFAULT_RATIOS
    offset: float = 0.5
    round_half_extents: bool = False
    stride_from_grid: bool = False

    def __post_init__(self):
        if isinstance(self.offset, bool) or not isinstance(self.offset, (int, float)) or not 0 <= self.offset < 1:
            raise ValueError(f"AnchorConfig.offset must be a number in [0, 1), got {self.offset!r}")
        object.__setattr__(self, "offset", float(self.offset))
        object.__setattr__(self, "round_half_extents", bool(self.round_half_extents))
        object.__setattr__(self, "stride_from_grid", bool(self.stride_from_grid))
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

    @classmethod
    def fpn(cls, strides=(4, 8, 16, 32, 64), smallest_size=32.0, ratios=DEFAULT_RATIOS) -> "MultiLevelAnchorConfig":
        """The FPN paper's anchors: one size per level, doubling from ``smallest_size`` (32, 64, 128, 256, 512 px on
        P2–P6 at strides 4–64), with ``ratios`` at every level — detectron2's and torchvision's defaults."""
        strides = tuple(int(s) for s in strides)
        return cls(tuple(AnchorConfig(stride=stride, scales=(smallest_size * 2 ** index / stride,), ratios=ratios)
                         for index, stride in enumerate(strides)))

    @classmethod
    def torchvision(cls, strides=(4, 8, 16, 32, 64), smallest_size=32.0,
                    ratios=DEFAULT_RATIOS) -> "MultiLevelAnchorConfig":
        """torchvision's ``AnchorGenerator`` of ``fasterrcnn_resnet50_fpn``: the FPN's sizes (``fpn``) with its
        conventions — centres on the cells' top-left corners (``offset=0``), half extents rounded half to even,
        the step between cells ``canvas size // map size``. (rpn-tf's default is the article's: exact values,
        centred on the cells.)"""
        return cls(tuple(dataclasses.replace(level, offset=0.0, round_half_extents=True, stride_from_grid=True)
                         for level in cls.fpn(strides, smallest_size, ratios).levels))


AnyAnchorConfig = Union[AnchorConfig, MultiLevelAnchorConfig]


def as_anchor_config(anchor_config) -> AnyAnchorConfig:
    """Accepts an ``AnchorConfig``, a ``MultiLevelAnchorConfig``, a sequence of ``AnchorConfig`` levels, or their
    serialized form (``anchor_config_to_dict``: one level's fields, or ``{"levels": [...]}``)."""
    if isinstance(anchor_config, (AnchorConfig, MultiLevelAnchorConfig)):
        return anchor_config
    if isinstance(anchor_config, dict):
        if "levels" in anchor_config:
            return MultiLevelAnchorConfig(tuple(AnchorConfig(**level) for level in anchor_config["levels"]))
        return AnchorConfig(**anchor_config)
    if isinstance(anchor_config, Sequence) and not isinstance(anchor_config, str):
        return MultiLevelAnchorConfig(tuple(anchor_config))
    raise TypeError(
        "anchor_config must be an AnchorConfig, a MultiLevelAnchorConfig or a sequence of AnchorConfig, "
        f"got {type(anchor_config).__name__}"
    )


def anchor_config_to_dict(anchor_config) -> dict:
    """JSON-ready data of an anchor config (``as_anchor_config`` reads it back): one level's fields, or
    ``{"levels": [...]}`` for a ``MultiLevelAnchorConfig``."""
    anchor_config = as_anchor_config(anchor_config)
    defaults = AnchorConfig()
    levels = [{"stride": level.stride, "scales": list(level.scales), "ratios": list(level.ratios),
               **{name: getattr(level, name) for name in ("offset", "round_half_extents", "stride_from_grid")
                  if getattr(level, name) != getattr(defaults, name)}}  # written when not the article's
              for level in anchor_config.levels]
    return levels[0] if isinstance(anchor_config, AnchorConfig) else {"levels": levels}
