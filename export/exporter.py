"""Export an ``RPNModel`` as a TensorFlow Serving SavedModel with all post-processing in the graph.

Signatures (batch size ``None`` everywhere):
  ``serving_default``  ``encoded_images``: string ``[B]`` JPEG/PNG/GIF/BMP bytes, images of any sizes.
  ``image_tensor``     ``images``: uint8 ``[B, H, W, 3]``.
  ``tf_example``       ``serialized_examples``: string ``[B]`` ``tf.train.Example`` with ``image/encoded``.
  ``sample_rois``      ``proposals`` float32 ``[B, N, 4]``, ``num_proposals`` int32 ``[B]``, ``gt_boxes`` float32
                       ``[B, M, 4]`` (padded with -1), ``gt_classes`` int32 ``[B, M]`` → the ``RoiSampler``'s outputs.
Image signatures return ``proposal_boxes`` float32 ``[B, N, 4]`` yxyx in the *original* image's pixels (zeros past
``num_proposals``), ``proposal_scores`` ``[B, N]``, ``num_proposals`` int32 ``[B]`` and ``image_scale`` float32
``[B, 2]`` (network size / original size, ``(sy, sx)``). Decoding, resizing (bilinear, to the model's input size)
and normalization happen inside the graph.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

import rpn_tf
from export import client

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
IMAGE_SIGNATURES = ("serving_default", "image_tensor", "tf_example")
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def _check_encoded(encoded, input_name):
    """Asserts that ``encoded`` (string ``[B]``) holds non-empty JPEG/PNG/GIF/BMP data."""
    head = tf.strings.substr(encoded, 0, 4)
    known = tf.zeros_like(encoded, tf.bool)
    for magic in _MAGIC:
        known |= tf.strings.substr(head, 0, len(magic)) == magic
    empty = tf.strings.length(encoded) == 0
    return [
        tf.debugging.Assert(tf.logical_not(tf.reduce_any(empty)),
                            [f"{input_name}: an element is empty (0 bytes); elements:",
                             tf.where(empty)[:, 0]], name=f"assert_{input_name}_not_empty"),
        tf.debugging.Assert(tf.reduce_all(known | empty),
                            [f"{input_name}: an element is not a JPEG, PNG, GIF or BMP image; elements:",
                             tf.where(~known)[:, 0]], name=f"assert_{input_name}_is_image"),
    ]


class RpnServingModule(tf.Module):
    """The served graph: an ``RPNModel`` plus decoding, resizing, proposals and ROI sampling."""

    def __init__(self, model: rpn_tf.RPNModel, roi_sampler: rpn_tf.RoiSampler | None = None):
        super().__init__(name="rpn_serving")
        self.model = model
        # Track the tf.Variables behind Keras 3's variables explicitly (as keras.export.ExportArchive does):
        # the session-based loader that TF Serving and saved_model_cli use needs every captured variable saved.
        self.model_variables = [getattr(variable, "value", variable) for variable in model.variables]
        self.roi_sampler = roi_sampler or rpn_tf.RoiSampler(seed=0)
        self.image_size = tuple(model.image_size)

    def _infer(self, images, original_sizes):
        """``images`` float32 ``[B, H, W, 3]`` at the model size; ``original_sizes`` float32 ``[B, 2]``."""
        outputs = self.model(images, training=False)
        proposals = self.model.propose(outputs, training=False)
        scale = tf.constant(self.image_size, tf.float32)[None, :] / original_sizes  # (B, 2): (sy, sx)
        boxes = proposals["boxes"] / tf.concat([scale, scale], axis=1)[:, None, :]
        boxes = rpn_tf.clip_boxes(boxes, original_sizes)
        valid = tf.range(tf.shape(boxes)[1])[None, :] < proposals["num_proposals"][:, None]
        return {"proposal_boxes": tf.where(valid[..., None], boxes, 0.0),
                "proposal_scores": proposals["scores"], "num_proposals": proposals["num_proposals"],
                "image_scale": scale}

    def _decode_and_resize(self, encoded, input_name):
        checks = _check_encoded(encoded, input_name)
        with tf.control_dependencies(checks):
            encoded = tf.identity(encoded)

        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            size = tf.cast(tf.shape(image)[:2], tf.float32)
            return tf.image.resize(image, self.image_size), size

        images, sizes = tf.map_fn(decode, encoded, fn_output_signature=(
            tf.TensorSpec([*self.image_size, 3], tf.float32), tf.TensorSpec([2], tf.float32)))
        return self._infer(images, sizes)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="encoded_images")])
    def serve_encoded_images(self, encoded_images):
        return self._decode_and_resize(encoded_images, "encoded_images")

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve_image_tensor(self, images):
        size = tf.cast(tf.shape(images)[1:3], tf.float32)
        sizes = tf.tile(size[None, :], [tf.shape(images)[0], 1])
        return self._infer(tf.image.resize(images, self.image_size), sizes)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="serialized_examples")])
    def serve_tf_example(self, serialized_examples):
        features = tf.io.parse_example(serialized_examples,
                                       {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
        return self._decode_and_resize(features["image/encoded"], "image/encoded")

    @tf.function(input_signature=[tf.TensorSpec([None, None, 4], tf.float32, name="proposals"),
                                  tf.TensorSpec([None], tf.int32, name="num_proposals"),
                                  tf.TensorSpec([None, None, 4], tf.float32, name="gt_boxes"),
                                  tf.TensorSpec([None, None], tf.int32, name="gt_classes")])
    def sample_rois(self, proposals, num_proposals, gt_boxes, gt_classes):
        return self.roi_sampler(proposals, gt_boxes, gt_classes, num_proposals)

    def signatures(self):
        return {"serving_default": self.serve_encoded_images.get_concrete_function(),
                "image_tensor": self.serve_image_tensor.get_concrete_function(),
                "tf_example": self.serve_tf_example.get_concrete_function(),
                "sample_rois": self.sample_rois.get_concrete_function()}


def load_model(model_path, config_path=None) -> rpn_tf.RPNModel:
    """An ``RPNModel`` from a ``.keras`` file, or from a weights file plus a JSON of ``RPNModel.get_config()``."""
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"{model_path} does not exist")
    if model_path.endswith(".keras"):
        model = keras.models.load_model(model_path)
    else:
        if config_path is None:
            raise ValueError(f"{model_path} is a weights file: pass the model's config JSON too "
                             "(json.dump(model.get_config(), ...))")
        with open(config_path) as file:
            model = rpn_tf.RPNModel.from_config(json.load(file))
        model.load_weights(model_path)
    if not isinstance(model, rpn_tf.RPNModel):
        raise TypeError(f"{model_path} holds a {type(model).__name__}, not an rpn_tf.RPNModel")
    return model


def next_version(model_dir) -> int:
    """1 + the largest numeric version folder in ``model_dir`` (1 if none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(name) for name in os.listdir(model_dir) if name.isdigit()]
    return max(versions, default=0) + 1


def warmup_image(image_size) -> bytes:
    """A synthetic JPEG (a smooth gradient) of ``image_size`` for warmup requests."""
    height, width = image_size
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    image = np.stack([np.broadcast_to(y, (height, width)), np.broadcast_to(x, (height, width)),
                      np.full((height, width), 128.0, np.float32)], axis=-1).astype(np.uint8)
    return tf.io.encode_jpeg(image).numpy()


def warmup_requests(model_name, image_size, jpeg=None):
    """One ``PredictRequest`` per image signature, on ``jpeg`` (default: ``warmup_image``)."""
    jpeg = jpeg or warmup_image(image_size)
    image = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"jpeg"])),
    })).SerializeToString()
    return [client.predict_request(model_name, "serving_default", encoded_images=[jpeg]),
            client.predict_request(model_name, "image_tensor", images=image[None]),
            client.predict_request(model_name, "tf_example", serialized_examples=[example])]


def write_warmup_records(export_dir, requests):
    """Writes ``assets.extra/tf_serving_warmup_requests`` (TFRecord of ``PredictionLog``)."""
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def export_saved_model(model, base_dir, model_name="rpn", version=None, roi_sampler=None,
                       warmup_jpeg=None) -> str:
    """Writes ``base_dir/model_name/version/`` (a SavedModel with warmup records) and returns that path.

    Args:
      model: an ``RPNModel`` (or a path accepted by ``load_model``).
      base_dir: TF Serving's model base path.
      model_name: the served model's name.
      version: integer version; default: the next free one.
      roi_sampler: the ``RoiSampler`` behind ``sample_rois`` (default: ``RoiSampler(seed=0)``).
      warmup_jpeg: JPEG bytes for the warmup requests (default: a synthetic image).
    """
    if isinstance(model, str):
        model = load_model(model)
    model_dir = os.path.join(base_dir, model_name)
    version = next_version(model_dir) if version is None else int(version)
    export_dir = os.path.join(model_dir, str(version))
    if os.path.exists(export_dir):
        raise FileExistsError(f"{export_dir} exists; TF Serving versions are immutable, choose another version")
    module = RpnServingModule(model, roi_sampler)
    tf.saved_model.save(module, export_dir, signatures=module.signatures())
    write_warmup_records(export_dir, warmup_requests(model_name, model.image_size, warmup_jpeg))
    return export_dir
