"""Named settings for the tools, each defined once.

``DEEPFOREST``: aerial tree crowns (deepforest's images, 8–107 px crowns, median ~40 px, h/w 0.8–1.4) — 400 px
tiles with 100 px overlap, the small ``simple`` backbone at stride 8, anchors of 20, 40, 80 px (scales 2.5, 5, 10)
with ratios 0.75, 1, 4/3. Stride 8, not the article's 16: with 20 px anchors on a 16 px grid a crown can sit 8 px
from the nearest anchor centre, where IoU tops out near 0.43 and almost no anchor reaches the 0.7 positive
threshold; at stride 8 the worst case is 0.67. The library's own defaults stay the article's.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

from rpn_tf.config import AnchorConfig


@dataclasses.dataclass(frozen=True)
class Preset:
    """Model and data settings that belong together."""

    image_size: Tuple[int, int]
    anchor_config: AnchorConfig
    backbone: str
    head_channels: int
    max_boxes: int
    tile_size: int = 0  # 0: no tiling
    tile_overlap: int = 0


DEEPFOREST = Preset(image_size=(400, 400),
                    anchor_config=AnchorConfig(stride=8, scales=(2.5, 5.0, 10.0), ratios=(0.75, 1.0, 4.0 / 3.0)),
                    backbone="simple", head_channels=64, max_boxes=200, tile_size=400, tile_overlap=100)
