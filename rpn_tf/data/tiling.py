"""Tiling of large images (aerial data) into overlapping fixed-size tiles.

Rule for boxes: a GT box is kept in a tile when at least ``min_visible`` (default 0.5) of its area lies inside
the tile; it is then clipped to the tile. Boxes cut more than that are left out of that tile (they appear whole,
or mostly, in an overlapping neighbour when ``overlap`` ≥ the largest object). The number of boxes left out of
every tile is reported, so nothing disappears silently.
"""

from __future__ import annotations

import dataclasses
from typing import List

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tile:
    """``image`` uint8 ``[tile, tile, 3]``; ``boxes`` float32 ``[n, 4]`` yxyx in tile pixels; ``origin`` the
    tile's top-left ``(y, x)`` in the source image; ``num_cut`` boxes overlapping the tile but left out."""

    image: np.ndarray
    boxes: np.ndarray
    origin: tuple
    num_cut: int


def _starts(length, tile_size, step):
    if length <= tile_size:
        return [0]
    starts = list(range(0, length - tile_size, step))
    return starts + [length - tile_size]  # the last tile is flush with the border


def tile_image(image, boxes, tile_size=400, overlap=100, min_visible=0.5) -> List[Tile]:
    """Cuts ``image`` ``[H, W, 3]`` with yxyx ``boxes`` ``[n, 4]`` into ``tile_size`` squares overlapping by
    ``overlap`` pixels (images smaller than a tile are zero-padded at the bottom / right)."""
    if not 0 <= overlap < tile_size:
        raise ValueError(f"need 0 <= overlap < tile_size, got overlap={overlap}, tile_size={tile_size}")
    if not 0.0 < min_visible <= 1.0:
        raise ValueError(f"min_visible must be in (0, 1], got {min_visible}")
    image = np.asarray(image)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    height, width = image.shape[:2]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    tiles = []
    step = tile_size - overlap
    for top in _starts(height, tile_size, step):
        for left in _starts(width, tile_size, step):
            window = image[top:top + tile_size, left:left + tile_size]
            if window.shape[:2] != (tile_size, tile_size):
                padded = np.zeros((tile_size, tile_size, image.shape[2]), image.dtype)
                padded[:window.shape[0], :window.shape[1]] = window
                window = padded
            shifted = boxes - np.array([top, left, top, left], np.float32)
            clipped = np.clip(shifted, 0, tile_size)
            visible = np.maximum(clipped[:, 2] - clipped[:, 0], 0) * np.maximum(clipped[:, 3] - clipped[:, 1], 0)
            fraction = np.divide(visible, areas, out=np.zeros_like(visible), where=areas > 0)
            keep = fraction >= min_visible
            num_cut = int(np.sum((visible > 0) & ~keep))
            tiles.append(Tile(np.ascontiguousarray(window), clipped[keep], (top, left), num_cut))
    return tiles
