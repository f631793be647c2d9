"""Backbones: image → feature maps (one, or a pyramid), with the preprocessing each one expects.

Built-in single-level names (stride 16):
  ``"vgg16"``        VGG16 through ``block5_conv3`` (512 channels), Caffe preprocessing — the article's.
  ``"resnet50"``     ResNet50 through ``conv4_block6_out`` (1024 channels), Caffe preprocessing.
  ``"mobilenet_v2"`` MobileNetV2 through ``block_13_expand_relu`` (576 channels), inputs scaled to [-1, 1].
  ``"simple"``       a small conv-BN-ReLU network (128 channels at stride 16; ``backbone_stride`` 4, 8, 16 or
                     32), inputs scaled to [0, 1]; trains from scratch on CPU in minutes.
Built-in feature pyramids (``modeling/fpn.py``; P2–P6 at strides 4–64, 256 channels):
  ``"resnet50_fpn"``     ResNet50 C2–C5 (``conv{2,3,4,5}_block*_out``), Caffe preprocessing — detectron2's
                         ``rpn_R_50_FPN``.
  ``"mobilenet_v2_fpn"`` MobileNetV2 at strides 4–32 (``block_2_add``, ``block_5_add``, ``block_12_add``,
                         ``out_relu``), inputs scaled to [-1, 1].
  ``"simple_fpn"``       the ``simple`` network's blocks at strides 4–32 (64 pyramid channels); CPU-sized.
A user ``keras.Model`` mapping ``[B, H, W, 3]`` images (already preprocessed by the user's model, or
``preprocessing="unit" | "caffe" | "tf" | "none"``) to one feature map (declare its stride) or to a dict / list of
maps (one per level; strides are read from the map sizes) also works.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from rpn_tf.config import validate_image_size
from rpn_tf.modeling.backbone_names import BUILTIN_BACKBONES, FPN_BACKBONES, FPN_STRIDES
from rpn_tf.modeling.fpn import feature_pyramid

PREPROCESSING_MODES = ("caffe", "tf", "unit", "torchvision", "none")
_APPLICATIONS = {"vgg16": "VGG16", "resnet50": "ResNet50", "mobilenet_v2": "MobileNetV2"}
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's normalization of 0–1 RGB pixels
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="rpn_tf")
class ImagePreprocessing(keras.layers.Layer):
    """Maps 0–255 RGB images to what a backbone expects.

    ``"caffe"``: RGB → BGR minus the ImageNet BGR means (VGG16, ResNet50 in ``keras.applications``);
    ``"tf"``: ``x / 127.5 - 1`` (MobileNetV2); ``"unit"``: ``x / 255``; ``"torchvision"``: ``(x / 255 - mean) /
    std`` with ImageNet's RGB mean and std (torchvision's ``GeneralizedRCNNTransform``); ``"none"``: unchanged.
    """

    def __init__(self, mode="caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(f"preprocessing mode must be one of {PREPROCESSING_MODES}, got {mode!r}")
        self.mode = mode

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype)
        if self.mode == "caffe":
            return images[..., ::-1] - keras.ops.convert_to_tensor(np.array(_CAFFE_BGR_MEAN), self.compute_dtype)
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "unit":
            return images / 255.0
        if self.mode == "torchvision":
            mean = keras.ops.convert_to_tensor(np.array(IMAGENET_MEAN), self.compute_dtype)
            std = keras.ops.convert_to_tensor(np.array(IMAGENET_STD), self.compute_dtype)
            return (images / 255.0 - mean) / std
        return images

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _simple_backbone(image_size, stride=16):
    """Conv-BN-ReLU pairs with 2×2 max pools; ``log2(stride)`` pooled blocks (16, 32, 64, 128… channels)."""
    if stride not in (4, 8, 16, 32):
        raise ValueError(f"the 'simple' backbone supports stride 4, 8, 16 or 32, got {stride}")
    inputs = keras.Input((*image_size, 3))
    features = inputs
    for block in range(int(np.log2(stride))):
        channels = 16 * 2 ** block
        for conv in range(2):
            name = f"block{block + 1}_conv{conv + 1}"
            features = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name=name)(features)
            features = keras.layers.BatchNormalization(momentum=0.9, synchronized=True,
                                                        name=f"{name}_bn")(features)
            features = keras.layers.ReLU(name=f"{name}_relu")(features)
        features = keras.layers.MaxPooling2D(2, padding="same", name=f"block{block + 1}_pool")(features)
    return keras.Model(inputs, features, name="simple_backbone")


def _application(name, image_size, weights):
    return getattr(keras.applications, _APPLICATIONS[name])(include_top=False, weights=weights,
                                                            input_shape=(*image_size, 3))


def _fpn_backbone(name, image_size, weights):
    trunk_name, mode, taps, channels = FPN_BACKBONES[name]
    if trunk_name == "simple":
        if weights is not None:
            raise ValueError("the 'simple_fpn' backbone has no pretrained weights; use weights=None")
        trunk = _simple_backbone(image_size, 32)
    else:
        trunk = _application(trunk_name, image_size, weights)
    bottom_up = [trunk.get_layer(layer).output for layer in taps]
    return feature_pyramid(trunk.input, bottom_up, channels, name=f"{name}_backbone"), FPN_STRIDES, mode


def feature_strides(model, image_size):
    """Strides of a backbone's output maps (a map, a list or a dict of maps), finest first, from their static
    sizes: the powers of two ``s`` with ``ceil(size / s)`` equal to the map's size."""
    strides = []
    for size in feature_shapes(model, image_size):
        matches = [2 ** k for k in range(12)
                   if (-(-image_size[0] // 2 ** k), -(-image_size[1] // 2 ** k)) == size]
        if not matches:
            raise ValueError(f"a backbone output of size {size} is no power-of-two stride of {image_size}")
        strides.append(matches[0])
    return tuple(strides)


def freeze_batch_norm(model):
    """Puts every batch norm layer of ``model`` (nested models included) in inference mode with fixed statistics and
    affine parameters — torchvision's ``FrozenBatchNorm2d``, detectron2's ``FrozenBN`` — by making it non-trainable
    (a non-trainable Keras ``BatchNormalization`` normalizes with its moving statistics, whatever ``training``).
    Returns the number of layers frozen."""
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            count += freeze_batch_norm(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
            count += 1
    return count


def build_backbone(backbone, image_size, weights=None, stride=None, freeze_layers=0, frozen_batch_norm=False):
    """Builds a backbone.

    Args:
      backbone: a name from ``BUILTIN_BACKBONES`` or a ``keras.Model`` (then ``stride`` is required).
      image_size: ``(height, width)`` of the network input.
      weights: ``None`` (random init), ``"imagenet"`` (downloads; needs a network) or a path to a weights file
        for the full ``keras.applications`` model without top. Only for built-in ``keras.applications`` names.
      stride: input pixels per feature-map cell; required for a user model, checked for built-ins.
      freeze_layers: the first this many backbone layers are made non-trainable.
      frozen_batch_norm: every batch norm layer frozen (``freeze_batch_norm``): for pretrained weights.

    Returns:
      ``(model, strides, preprocessing_mode)``: ``strides`` one per output map, finest first (one entry for a
      single map).
    """
    image_size = validate_image_size(image_size)
    strides = None
    if isinstance(backbone, keras.Model):
        if weights is not None:
            raise ValueError("weights= applies to built-in backbones; load weights into your model yourself")
        model, mode = backbone, "none"
        if isinstance(model.output, (dict, list, tuple)):
            strides = feature_strides(model, image_size)
        elif stride is None:
            raise ValueError("a custom backbone model with one output map needs its stride: pass backbone_stride=")
    elif isinstance(backbone, str) and backbone in FPN_BACKBONES:
        model, strides, mode = _fpn_backbone(backbone, image_size, weights)
    elif isinstance(backbone, str) and backbone in BUILTIN_BACKBONES:
        builtin_stride, mode, output_layer = BUILTIN_BACKBONES[backbone]
        if backbone == "simple":
            if weights is not None:
                raise ValueError("the 'simple' backbone has no pretrained weights; use weights=None")
            stride = stride or builtin_stride
            model = _simple_backbone(image_size, stride)
        elif stride is not None and stride != builtin_stride:
            raise ValueError(f"backbone {backbone!r} has stride {builtin_stride}, not {stride}")
        else:
            stride = builtin_stride
            full = _application(backbone, image_size, weights)
            model = keras.Model(full.input, full.get_layer(output_layer).output, name=f"{backbone}_backbone")
    else:
        raise ValueError(f"backbone must be one of {sorted(BUILTIN_BACKBONES) + sorted(FPN_BACKBONES)} or a "
                         f"keras.Model, got {backbone!r}")
    if freeze_layers < 0:
        raise ValueError(f"freeze_layers must be >= 0, got {freeze_layers}")
    for layer in model.layers[:freeze_layers]:
        layer.trainable = False
    if frozen_batch_norm:
        freeze_batch_norm(model)
    return model, strides or (int(stride),), mode


def feature_list(features):
    """A backbone's output as a list of maps, finest first (a dict's levels sorted by size; maps of a size known
    only at run time — a backbone of any input size — in the order given)."""
    if isinstance(features, dict):
        features = list(features.values())
    if not isinstance(features, (list, tuple)):
        return [features]
    if any(feature.shape[1] is None for feature in features):
        return list(features)
    return sorted(features, key=lambda feature: -int(feature.shape[1]))


def feature_shapes(model, image_size):
    """The ``(height, width)`` of each of a backbone's maps (finest first) for ``image_size`` inputs: the static
    output shapes, or — for a backbone of any input size — Keras's shape inference at that size."""
    outputs = feature_list(model.output)
    if all(output.shape[1] is not None and output.shape[2] is not None for output in outputs):
        return [(int(output.shape[1]), int(output.shape[2])) for output in outputs]
    shapes = model.compute_output_shape((1, *image_size, 3))
    if isinstance(shapes, dict):
        shapes = list(shapes.values())
    if not isinstance(shapes, (list, tuple)) or (shapes and isinstance(shapes[0], int)):
        shapes = [shapes]
    return [(int(shape[1]), int(shape[2])) for shape in shapes]


def check_input_size(images, image_size):
    """``images`` unchanged if they are ``image_size`` canvases; otherwise an error naming both sizes (statically
    when the size is known, else when the images arrive), not a reshape error deep in the backbone."""
    size = tuple(images.shape[1:3])
    message = (f"RPNModel expects images of {image_size[0]}x{image_size[1]} (its image_size); use model.predict or "
               "the model's target_encoder to resize images of other sizes")
    if None not in size and size != tuple(image_size):
        raise ValueError(f"{message}; got {size[0]}x{size[1]}")
    if None in size:
        check = tf.debugging.assert_equal(tf.shape(images)[1:3], tf.constant(image_size, tf.int32), message=message)
        with tf.control_dependencies([check]):
            images = tf.identity(images)
    return images


NOT_A_BATCH = "predict takes a batch of images [B, H, W, 3] (one size per batch)"
NOT_RGB = ("predict takes RGB images with 3 channels (grayscale: tf.image.grayscale_to_rgb; RGBA: drop the alpha "
           "channel, image[..., :3])")


def check_raw_images(images):
    """Raw images for ``predict``: a batch ``[B, H0, W0, 3]`` of RGB images (one size), not empty, finite. Shape
    errors are raised here, naming the problem; empty and non-finite images fail when the step runs, with a message
    saying so (NaN pixels would otherwise give detections of garbage). Inside an XLA-compiled step TensorFlow drops
    the run-time asserts (XLA has no assert); the shape checks still hold."""
    images = tf.convert_to_tensor(images)
    if images.shape.rank is not None and images.shape.rank != 4:
        raise ValueError(f"{NOT_A_BATCH}; got shape {images.shape} — add a batch axis to one image (image[None])")
    if images.shape.rank == 4 and images.shape[-1] is not None and images.shape[-1] != 3:
        raise ValueError(f"{NOT_RGB}; got {images.shape[-1]}")
    if images.shape.rank is None:  # a trace with relaxed shapes: predict() checked the arrays' rank already
        images = tf.identity(images)
        images.set_shape([None, None, None, None])
    checks = [tf.debugging.assert_equal(tf.shape(images)[-1], 3, message=NOT_RGB),
              tf.debugging.assert_positive(tf.shape(images)[1:3],
                                           message="predict: an image has zero height or width")]
    if images.dtype.is_floating:
        checks.append(tf.debugging.assert_all_finite(images, "predict: the images contain NaN or Inf values"))
    with tf.control_dependencies(checks):
        return tf.identity(images)


def check_predict_input(x):
    """``predict``'s input before Keras traces a step: arrays / tensors (or ``{"image": ...}``) must be batches of RGB
    images ``[B, H, W, 3]`` — Keras relaxes shapes between calls, so a later step could no longer say so itself."""
    images = x.get("image") if isinstance(x, dict) else x
    shape = getattr(images, "shape", None)
    if shape is None or isinstance(images, tf.data.Dataset):
        return
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(f"{NOT_A_BATCH}; got shape {shape} — add a batch axis to one image (image[None])")
    if shape[-1] is not None and shape[-1] != 3:
        raise ValueError(f"{NOT_RGB}; got {shape[-1]}")
