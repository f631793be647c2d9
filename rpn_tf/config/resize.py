"""``ResizeConfig``: how an image of any size becomes the network's fixed input canvas."""

from __future__ import annotations

import dataclasses

from rpn_tf.config.fields import positive_int_field as _positive_int

RESIZE_POLICIES = ("letterbox", "stretch", "shorter_side", "torchvision")


@dataclasses.dataclass(frozen=True)
class ResizeConfig:
    """How an image of any size becomes the network's fixed input canvas (the model's ``image_size``, H × W).

    Policies:
      ``"letterbox"`` (default): keep the aspect ratio, scale to fit the canvas, pad bottom / right with zeros.
      ``"stretch"``: scale each axis to the canvas (aspect ratio not kept; no padding) — rpn-tf 0.1's behaviour.
      ``"shorter_side"``: detectron2 / Model Garden style — scale so the shorter side is ``shorter_side`` with the
        longer side at most ``max_size`` (and the result within the canvas), pad bottom / right. The canvas is
        fixed (Model Garden's ``output_size``) rather than per batch, so shapes stay static; make it a multiple of
        the largest stride, e.g. 1344 × 1344 for 800 / 1333.
      ``"torchvision"``: torchvision's ``GeneralizedRCNNTransform`` exactly — the size ``floor(side · min(
        shorter_side / shorter, max_size / longer))`` computed in float64 (often 799, not 800), bilinear resizing
        kept in float (no rounding to the input's dtype), padding bottom / right with the ImageNet mean colour (0
        after the ``"torchvision"`` normalization, as torchvision pads its normalized images). ``predict`` and the
        served graph pad a batch only to the next multiple of ``size_divisible`` (32) of its largest image, as
        torchvision batches, so the canvas varies per batch (a backbone of any input size is needed); the
        ``tf.data`` encoder pads to the fixed canvas, for training.
    Each resized image carries its ``image_scale`` ``(sy, sx)`` (canvas pixels per original pixel) and its
    ``valid_size`` (the unpadded height and width on the canvas); anchors outside the valid region are ignored and
    proposals are clipped to it.
    """

    policy: str = "letterbox"
    shorter_side: int = 800
    max_size: int = 1333
    size_divisible: int = 32

    def __post_init__(self):
        if self.policy not in RESIZE_POLICIES:
            raise ValueError(f"ResizeConfig.policy must be one of {RESIZE_POLICIES}, got {self.policy!r}")
        object.__setattr__(self, "shorter_side", _positive_int("ResizeConfig", "shorter_side", self.shorter_side))
        object.__setattr__(self, "max_size", _positive_int("ResizeConfig", "max_size", self.max_size))
        object.__setattr__(self, "size_divisible", _positive_int("ResizeConfig", "size_divisible",
                                                                 self.size_divisible))
        if self.max_size < self.shorter_side:
            raise ValueError(f"ResizeConfig needs max_size >= shorter_side, got {self.max_size} < "
                             f"{self.shorter_side}")


def as_resize_config(resize) -> ResizeConfig:
    """A ``ResizeConfig`` from ``None`` (letterbox), a policy name, a dict of fields or a ``ResizeConfig``."""
    if resize is None:
        return ResizeConfig()
    if isinstance(resize, ResizeConfig):
        return resize
    if isinstance(resize, str):
        return ResizeConfig(policy=resize)
    if isinstance(resize, dict):
        return ResizeConfig(**resize)
    raise TypeError(f"resize must be a policy name {RESIZE_POLICIES}, a dict or a ResizeConfig, got "
                    f"{type(resize).__name__}")


def canvas_varies(resize) -> bool:
    """Whether ``predict`` / serving put a batch on a canvas of its own size (the ``"torchvision"`` policy)."""
    return as_resize_config(resize).policy == "torchvision"


def inference_canvas(resize, image_size):
    """The canvas ``predict`` and the served graph resize onto before cutting a batch's own canvas out of it: the
    model's ``image_size``, or — ``"torchvision"`` policy — a square that holds any image of the transform
    (``max_size`` rounded up to ``size_divisible``: 1 344 for 1 333), whatever the training canvas."""
    config = as_resize_config(resize)
    if not canvas_varies(config):
        return tuple(image_size)
    side = -(-config.max_size // config.size_divisible) * config.size_divisible
    return side, side
