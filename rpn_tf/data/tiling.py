"""Tiling of large images (aerial data) into overlapping fixed-size tiles, as a streaming ``tf.data`` transform.

Rule for boxes: a GT box is kept in a tile when at least ``min_visible`` (default 0.5) of its area lies inside
the tile; it is then clipped to the tile. A box that overlaps the tile but is cut more than that is left out of
that tile (it appears whole, or mostly, in an overlapping neighbour when ``overlap`` ≥ the largest object) and
counted in the tile's ``boxes_cut``, so nothing disappears silently.
"""

from __future__ import annotations

import tensorflow as tf


def _tile_starts(length, tile_size, step):
    """``0, step, 2·step, …`` below ``length - tile_size``, then one tile flush with the border."""
    last = tf.maximum(length - tile_size, 0)
    starts = tf.range(0, tf.maximum(last, 1), step)
    return tf.cond(last > 0, lambda: tf.concat([starts, [last]], axis=0), lambda: tf.zeros([1], tf.int32))


def tile_dataset(dataset, tile_size=400, overlap=100, min_visible=0.5):
    """Cuts every element into ``tile_size`` squares overlapping by ``overlap`` pixels.

    Images smaller than a tile (or the last row / column of tiles) are zero-padded at the bottom / right.

    Args:
      dataset: elements ``{"image": [H, W, 3], "boxes": [n, 4] yxyx pixels, "classes": [n]}``.
      tile_size, overlap: tile side and overlap in pixels (``0 <= overlap < tile_size``).
      min_visible: share of a box's area that must lie inside a tile for the box to be kept there.

    Returns:
      A dataset of tile elements: ``image`` ``[tile_size, tile_size, 3]``, ``boxes`` ``[k, 4]`` in tile pixels
      (clipped), ``classes`` ``[k]``, ``tile_origin`` int32 ``[2]`` (the tile's top-left ``(y, x)`` in the source
      image) and ``boxes_cut`` int32 (boxes overlapping the tile but left out by the ``min_visible`` rule).
    """
    if not 0 <= overlap < tile_size:
        raise ValueError(f"need 0 <= overlap < tile_size, got overlap={overlap}, tile_size={tile_size}")
    if not 0.0 < min_visible <= 1.0:
        raise ValueError(f"min_visible must be in (0, 1], got {min_visible}")
    step = tile_size - overlap

    def tiles(element):
        image, boxes, classes = element["image"], element["boxes"], element["classes"]
        shape = tf.shape(image)
        tops, lefts = _tile_starts(shape[0], tile_size, step), _tile_starts(shape[1], tile_size, step)
        grid_top, grid_left = tf.meshgrid(tops, lefts, indexing="ij")
        origins = tf.stack([tf.reshape(grid_top, [-1]), tf.reshape(grid_left, [-1])], axis=1)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

        def cut(origin):
            window = image[origin[0]:origin[0] + tile_size, origin[1]:origin[1] + tile_size]
            window = tf.image.pad_to_bounding_box(window, 0, 0, tile_size, tile_size)
            offset = tf.cast(tf.concat([origin, origin], axis=0), tf.float32)
            clipped = tf.clip_by_value(boxes - offset, 0.0, float(tile_size))
            visible = (tf.maximum(clipped[:, 2] - clipped[:, 0], 0.0)
                       * tf.maximum(clipped[:, 3] - clipped[:, 1], 0.0))
            keep = tf.math.divide_no_nan(visible, areas) >= min_visible
            boxes_cut = tf.reduce_sum(tf.cast((visible > 0.0) & ~keep, tf.int32))
            return {"image": window, "boxes": tf.boolean_mask(clipped, keep),
                    "classes": tf.boolean_mask(classes, keep), "tile_origin": origin, "boxes_cut": boxes_cut}

        return tf.data.Dataset.from_tensor_slices(origins).map(cut)

    return dataset.flat_map(tiles)
