"""Resizing images of any size onto the network's fixed input canvas, by a ``ResizeConfig`` policy.

The same function serves the ``tf.data`` encoder, ``RPNModel.predict`` and the served graph, so training, prediction
and serving see identical pixels.
"""

from __future__ import annotations

import tensorflow as tf

from rpn_tf.config import ResizeConfig, as_resize_config


def prepare_image(image):
    """Checks an image tensor ``[H, W, C]`` (C = 1 or 3) and returns it with 3 channels (gray → RGB)."""
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(f"image must be [height, width, channels], got shape {image.shape}")
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif image.shape[-1] is not None and image.shape[-1] != 3:
        raise ValueError(f"image must have 1 or 3 channels, got shape {image.shape}")
    elif image.shape[-1] is None:  # e.g. decode_image inside ds.map: checked when the image arrives
        channels = tf.shape(image)[-1]
        check = tf.debugging.Assert((channels == 1) | (channels == 3),
                                    ["image must have 1 or 3 channels (decode with channels=3), got", channels],
                                    name="assert_image_channels")
        with tf.control_dependencies([check]):
            image = tf.cond(channels == 1, lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3])
        image = tf.ensure_shape(image, [None, None, 3])
    return image


def resized_shape(original_size, image_size, config: ResizeConfig):
    """The image's size on the canvas before padding: int32 ``Tensor[2]`` ``(h, w)``.

    ``original_size``: int ``Tensor[2]``; ``image_size``: the canvas ``(H, W)``.
    """
    original = tf.cast(original_size, tf.float32)
    canvas = tf.constant(image_size, tf.float32)
    if config.policy == "stretch":
        return tf.constant(image_size, tf.int32)
    if config.policy == "torchvision":  # torchvision's eager transform: Python floats, floor
        exact = tf.cast(original_size, tf.float64)
        scale = tf.minimum(config.shorter_side / tf.reduce_min(exact), config.max_size / tf.reduce_max(exact))
        # a training canvas smaller than the transform's sizes: fitted into it, the aspect ratio kept (predict and
        # serving use a canvas that holds every size: inference_canvas, so this never binds there)
        scale = tf.minimum(scale, tf.reduce_min(tf.constant(image_size, tf.float64) / exact))
        size = tf.cast(tf.floor(exact * scale), tf.int32)
        return tf.clip_by_value(size, 1, tf.constant(image_size, tf.int32))
    scale = tf.reduce_min(canvas / original)  # letterbox: fit the canvas
    if config.policy == "shorter_side":
        scale = tf.minimum(scale, tf.minimum(config.shorter_side / tf.reduce_min(original),
                                             config.max_size / tf.reduce_max(original)))
    size = tf.cast(tf.round(original * scale), tf.int32)
    return tf.clip_by_value(size, 1, tf.constant(image_size, tf.int32))


# the ImageNet mean colour in 0–255 RGB: the "torchvision" policy's padding (0 after its normalization)
PADDING_COLOUR = tuple(255.0 * m for m in (0.485, 0.456, 0.406))


def _torchvision_resize(image, image_size, config):
    """``resize_to_canvas`` of the ``"torchvision"`` policy: float32 canvas, mean-colour padding."""
    original_size = tf.shape(image)[-3:-1]
    size = resized_shape(original_size, image_size, config)
    image = tf.cast(image, tf.float32)
    resized = tf.cond(tf.reduce_all(size == original_size), lambda: tf.identity(image),
                      lambda: tf.image.resize(image, size, method="bilinear"))
    colour = tf.constant(PADDING_COLOUR, tf.float32)
    canvas = tf.image.pad_to_bounding_box(resized - colour, 0, 0, image_size[0], image_size[1]) + colour
    canvas = tf.ensure_shape(canvas, [*image.shape[:-3], *image_size, 3])
    return canvas, tf.cast(size, tf.float32) / tf.cast(original_size, tf.float32), size


def trim_canvas(canvas, valid_sizes, divisor):
    """A batch of canvases ``[B, H, W, 3]`` cut down to the next multiple of ``divisor`` of its largest valid size
    (``valid_sizes`` ``[B, 2]``): torchvision's ``batch_images`` — the canvas of a batch is its own size."""
    largest = tf.cast(tf.reduce_max(tf.reshape(valid_sizes, [-1, 2]), axis=0), tf.int32)
    size = tf.minimum((largest + divisor - 1) // divisor * divisor, tf.shape(canvas)[1:3])
    return canvas[:, :size[0], :size[1]]


def resize_to_canvas(image, image_size, config=None):
    """Resizes ``[H0, W0, 3]`` (or a batch ``[B, H0, W0, 3]`` of one size) onto the ``image_size`` canvas.

    Bilinear resizing to ``resized_shape``, then zero padding at the bottom / right. The dtype is kept: integer
    images are rounded back (uint8 stays uint8, 4× less memory through a pipeline); an image whose resized shape is
    its own is not resampled.

    Args:
      image: ``Tensor[H0, W0, 3]`` or ``[B, H0, W0, 3]``, any numeric dtype.
      image_size: the canvas ``(H, W)``.
      config: ``ResizeConfig``, a policy name or ``None`` (letterbox).

    Returns:
      ``(canvas [..., H, W, 3], image_scale float32 [2], valid_size int32 [2])``: ``image_scale`` = resized /
      original size ``(sy, sx)`` (multiply original-pixel boxes by it), ``valid_size`` the unpadded ``(h, w)``.
    """
    config = as_resize_config(config)
    image = tf.convert_to_tensor(image)
    if config.policy == "torchvision":
        return _torchvision_resize(image, image_size, config)
    if config.policy in ("letterbox", "stretch") and tuple(image.shape[-3:-1]) == tuple(image_size):
        # Statically canvas-sized (e.g. resized earlier in the pipeline): nothing to resample or pad.
        size = tf.constant(image_size, tf.int32)
        return tf.identity(image), tf.ones([2], tf.float32), size
    original_size = tf.shape(image)[-3:-1]
    size = resized_shape(original_size, image_size, config)
    dtype = image.dtype
    canvas_size = tf.constant(image_size, tf.int32)

    def resample():
        resized = tf.image.resize(image, size, method="bilinear")
        return resized if dtype.is_floating else tf.saturate_cast(tf.round(resized), dtype)

    def resample_and_pad():
        resized = tf.cond(tf.reduce_all(size == original_size), lambda: tf.identity(image), resample)
        # Padded only when it does not fill the canvas: padding copies the whole image (for an 800² uint8 image
        # that cost more than its target encoding).
        return tf.cond(tf.reduce_all(size == canvas_size), lambda: tf.identity(resized),
                       lambda: tf.image.pad_to_bounding_box(resized, 0, 0, image_size[0], image_size[1]))

    # One cond in the usual pass-through case (an image already at the canvas size).
    canvas = tf.cond(tf.reduce_all(size == original_size) & tf.reduce_all(size == canvas_size),
                     lambda: tf.identity(image), resample_and_pad)
    canvas = tf.ensure_shape(canvas, [*image.shape[:-3], *image_size, 3])
    scale = tf.cast(size, tf.float32) / tf.cast(original_size, tf.float32)
    return canvas, scale, size
