"""Resizing an image (and its boxes) to the network's input size.

The same function serves the ``tf.data`` encoder and the served graph, so training and serving see identical
pixels.
"""

from __future__ import annotations

import tensorflow as tf


def prepare_image(image):
    """Checks an image tensor ``[H, W, C]`` (C = 1 or 3) and returns it with 3 channels (gray → RGB)."""
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(f"image must be [height, width, channels], got shape {image.shape}")
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif image.shape[-1] is not None and image.shape[-1] != 3:
        raise ValueError(f"image must have 1 or 3 channels, got shape {image.shape}")
    return image


def resize_image(image, image_size):
    """Resizes ``[H0, W0, 3]`` (or ``[B, H0, W0, 3]``) to ``image_size`` (bilinear, aspect ratio not kept).

    The dtype is kept: integer images are rounded back (uint8 stays uint8, 4× less memory through a pipeline);
    an image already at ``image_size`` is returned unchanged.

    Returns:
      ``(resized image, scale)`` with ``scale`` float32 ``Tensor[2]`` = ``image_size / original size``, ``(sy, sx)``.
    """
    original_size = tf.shape(image)[-3:-1]
    target_size = tf.constant(image_size, tf.int32)
    dtype = image.dtype

    def resize():
        resized = tf.image.resize(image, image_size, method="bilinear")
        return resized if dtype.is_floating else tf.saturate_cast(tf.round(resized), dtype)

    image = tf.cond(tf.reduce_all(original_size == target_size), lambda: image, resize)
    image = tf.ensure_shape(image, [*image.shape[:-3], *image_size, 3])
    return image, tf.cast(target_size, tf.float32) / tf.cast(original_size, tf.float32)
