"""Named settings for the tools, each defined once. Importing this module does not import TensorFlow (the CLI's
``--help`` stays instant and quiet).

``article``     the article's model: VGG16, 800×800, stride 16, anchors 128 / 256 / 512 px (scales 8, 16, 32) ×
                ratios 0.5, 1, 2; SGD (momentum 0.9) at 0.001 — the library's own defaults.
``fpn``         ResNet-50-FPN (P2–P6, one 32–512 px anchor size per level × 3 ratios), 800×800, SGD 0.01 with
                momentum (detectron2's ``rpn_R_50_FPN`` recipe scaled to a small batch).
``deepforest``  aerial tree crowns (deepforest's images, 8–107 px crowns, median ~40 px, h/w 0.8–1.4) — 400 px tiles
                with 100 px overlap, the small ``simple`` backbone at stride 8, anchors of 20, 40, 80 px (scales
                2.5, 5, 10) with ratios 0.75, 1, 4/3, Adam 0.001. Stride 8, not the article's 16: with 20 px anchors
                on a 16 px grid a crown can sit 8 px from the nearest anchor centre, where IoU tops out near 0.43
                and almost no anchor reaches the 0.7 positive threshold; at stride 8 the worst case is 0.67.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

# The built-in backbones and their strides (the ``simple`` one also takes 4, 8 or 32): the modeling's own table.
from rpn_tf.modeling.backbone_names import BACKBONE_STRIDES, BACKBONES, FPN_BACKBONES  # noqa: E402,F401


@dataclasses.dataclass(frozen=True)
class Preset:
    """Model, data and optimizer settings that belong together."""

    summary: str
    image_size: Tuple[int, int]
    backbone: str
    scales: Tuple[float, ...] = (8.0, 16.0, 32.0)
    ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    stride: Optional[int] = None  # None: the backbone's
    head_channels: Optional[int] = None  # None: the model's default (512, or the pyramid's channels)
    max_boxes: int = 100
    data_format: Optional[str] = None  # None: --format is required
    tile_size: int = 0  # 0: no tiling
    tile_overlap: int = 0
    optimizer: str = "sgd"
    learning_rate: float = 1e-3
    num_classes: Optional[int] = None  # FasterRCNN's object classes; None: --num-classes is required
    representation_size: int = 1024  # FasterRCNN's box head: 2 x FC of this size

    @property
    def anchor_config(self):
        """The ``AnchorConfig`` of a single-level preset (imports TensorFlow)."""
        from rpn_tf.config import AnchorConfig

        return AnchorConfig(stride=self.stride or BACKBONE_STRIDES[self.backbone], scales=self.scales,
                            ratios=self.ratios)


PRESETS = {
    "article": Preset("VGG16, 800x800, stride 16, anchors 128/256/512 px x ratios 0.5/1/2, SGD 0.001",
                      image_size=(800, 800), backbone="vgg16"),
    "fpn": Preset("ResNet-50-FPN P2-P6, 800x800, anchors 32-512 px (one size per level) x 3 ratios, SGD 0.01",
                  image_size=(800, 800), backbone="resnet50_fpn", learning_rate=1e-2),
    "deepforest": Preset("tree crowns: simple backbone, 400x400 tiles, stride 8, anchors 20/40/80 px, Adam 0.001, "
                         "--format deepforest", image_size=(400, 400), backbone="simple", scales=(2.5, 5.0, 10.0),
                         ratios=(0.75, 1.0, 4.0 / 3.0), stride=8, head_channels=64, max_boxes=200,
                         data_format="deepforest", tile_size=400, tile_overlap=100, optimizer="adam",
                         num_classes=1, representation_size=256),
}
DEEPFOREST = PRESETS["deepforest"]
