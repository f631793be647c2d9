"""Drawing boxes on images (PNG bytes), for the demo and the CLI."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

GREEN, RED, BLUE = (0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)


def draw_boxes(image, box_sets):
    """Draws yxyx pixel boxes on ``image`` (uint8 ``[H, W, 3]``).

    Args:
      box_sets: a list of ``(boxes [n, 4], (r, g, b) in [0, 1])``.

    Returns:
      PNG bytes.
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    canvas = tf.cast(image[None], tf.float32) / 255.0
    for boxes, colour in box_sets:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            continue
        normalized = boxes / np.array([height, width, height, width], np.float32)
        canvas = tf.image.draw_bounding_boxes(canvas, normalized[None], np.array([colour], np.float32))
    return tf.io.encode_png(tf.cast(tf.clip_by_value(canvas[0], 0, 1) * 255, tf.uint8)).numpy()


def write_png(path, png_bytes):
    with open(path, "wb") as file:
        file.write(png_bytes)
