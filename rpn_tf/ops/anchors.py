"""Anchor generation.

Shape shorthand: H, W image size; Hf, Wf feature-map size (``ceil(H / stride)``); K anchors per location
(``len(ratios) * len(scales)``); A = Hf * Wf * K anchors in all (summed over levels).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from rpn_tf.config import AnchorConfig, as_anchor_config, validate_image_size


def cell_anchor_shapes(level: AnchorConfig) -> np.ndarray:
    """Heights and widths of the K anchors of one location, ratio-major / scale-minor.

    Returns:
      float64 ``[K, 2]`` of ``(height, width)`` in pixels.
    """
    shapes = []
    for ratio in level.ratios:  # ratio-major ...
        for scale in level.scales:  # ... scale-minor
            side = level.stride * scale
            shapes.append((side * np.sqrt(ratio), side / np.sqrt(ratio)))
    return np.asarray(shapes, dtype=np.float64)


def half_extents(level: AnchorConfig) -> np.ndarray:
    """float64 ``[K, 2]`` half heights and widths of one location's anchors (rounded half to even with
    ``round_half_extents``, as torchvision's ``AnchorGenerator``)."""
    half = cell_anchor_shapes(level) / 2.0
    return np.round(half) if level.round_half_extents else half


def cell_steps(level: AnchorConfig, image_size, map_size):
    """The step between cells ``(sy, sx)``: the stride, or ``canvas // map`` per axis (``stride_from_grid``)."""
    if level.stride_from_grid:
        return image_size[0] // map_size[0], image_size[1] // map_size[1]
    return level.stride, level.stride


def _level_anchors(image_size, level: AnchorConfig) -> np.ndarray:
    rows, cols = level.feature_map_size(image_size)
    step_y, step_x = cell_steps(level, image_size, (rows, cols))
    centre_y = (np.arange(rows, dtype=np.float64) + level.offset) * step_y
    centre_x = (np.arange(cols, dtype=np.float64) + level.offset) * step_x
    centre_y, centre_x = np.meshgrid(centre_y, centre_x, indexing="ij")  # (Hf, Wf), row-major
    centres = np.stack([centre_y, centre_x], axis=-1).reshape(-1, 1, 2)  # (Hf*Wf, 1, 2)
    half_shapes = half_extents(level)[None, :, :]  # (1, K, 2)
    boxes = np.concatenate([centres - half_shapes, centres + half_shapes], axis=-1)  # (Hf*Wf, K, 4)
    return boxes.reshape(-1, 4)


def level_anchors_in_graph(canvas_size, map_size, level: AnchorConfig):
    """The anchors of one level for a canvas and map size known only at run time (a backbone of any input size,
    torchvision's transform): float32 ``Tensor[Hf·Wf·K, 4]`` in ``generate_anchors``' order and values.

    Args:
      canvas_size / map_size: int32 ``Tensor[2]`` ``(H, W)`` of the canvas and of the level's map.
    """
    canvas_size, map_size = tf.cast(canvas_size, tf.int32), tf.cast(map_size, tf.int32)
    if level.stride_from_grid:
        steps = tf.cast(canvas_size // map_size, tf.float32)
    else:
        steps = tf.constant([level.stride, level.stride], tf.float32)
    centre_y = (tf.range(map_size[0], dtype=tf.float32) + level.offset) * steps[0]
    centre_x = (tf.range(map_size[1], dtype=tf.float32) + level.offset) * steps[1]
    centre_y, centre_x = tf.meshgrid(centre_y, centre_x, indexing="ij")
    centres = tf.reshape(tf.stack([centre_y, centre_x], axis=-1), [-1, 1, 2])
    half = tf.constant(half_extents(level)[None].astype(np.float32))  # (1, K, 2)
    return tf.reshape(tf.concat([centres - half, centres + half], axis=-1), [-1, 4])


def generate_anchors(image_size=(800, 800), anchor_config=None) -> tf.Tensor:
    """Generates every anchor of an image.

    Args:
      image_size: ``(height, width)`` of the network input in pixels.
      anchor_config: an ``AnchorConfig`` (default: the article's stride 16, scales (8, 16, 32), ratios
        (0.5, 1, 2)), a ``MultiLevelAnchorConfig`` or a sequence of ``AnchorConfig`` levels.

    Returns:
      float32 ``Tensor[A, 4]`` of ``[y1, x1, y2, x2]`` absolute pixel boxes (no +1), ordered by level, then
      feature-map row, column, ratio (major) and scale (minor). Anchors are not clipped to the image.
    """
    image_size = validate_image_size(image_size)
    config = as_anchor_config(anchor_config if anchor_config is not None else AnchorConfig())
    # Computed once in float64 with NumPy: anchors are constants of the graph, not per-step work.
    boxes = np.concatenate([_level_anchors(image_size, level) for level in config.levels], axis=0)
    return tf.constant(boxes.astype(np.float32))


def num_anchors(image_size, anchor_config=None) -> int:
    """Number of anchors ``A`` that ``generate_anchors`` returns for this image size and config."""
    return sum(anchors_per_level(image_size, anchor_config))


def anchors_per_level(image_size, anchor_config=None) -> tuple:
    """Number of anchors of each level, in ``generate_anchors``'s order (one entry for a single level)."""
    image_size = validate_image_size(image_size)
    config = as_anchor_config(anchor_config if anchor_config is not None else AnchorConfig())
    counts = []
    for level in config.levels:
        rows, cols = level.feature_map_size(image_size)
        counts.append(rows * cols * level.num_anchors_per_location)
    return tuple(counts)


def anchor_cell_origins(image_size, anchor_config=None) -> np.ndarray:
    """Top-left ``(y, x)`` of the feature cell of every anchor (``[A, 2]`` float32, ``generate_anchors``'s order).

    A cell exists in an image of valid size ``(h, w)`` iff its origin is ``< (h, w)`` — which decides, for a padded
    canvas, which anchors an unpadded image of that size would have had.
    """
    image_size = validate_image_size(image_size)
    config = as_anchor_config(anchor_config if anchor_config is not None else AnchorConfig())
    origins = []
    for level in config.levels:
        rows, cols = level.feature_map_size(image_size)
        step_y, step_x = cell_steps(level, image_size, (rows, cols))
        grid_y, grid_x = np.meshgrid(np.arange(rows) * step_y, np.arange(cols) * step_x, indexing="ij")
        cells = np.stack([grid_y, grid_x], axis=-1).reshape(-1, 1, 2)
        origins.append(np.repeat(cells, level.num_anchors_per_location, axis=1).reshape(-1, 2))
    return np.concatenate(origins, axis=0).astype(np.float32)
