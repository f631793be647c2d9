"""The served graph of an ``RPNModel``: decoding, resizing, the network, proposals and ROI sampling.

Signatures (batch size ``None`` everywhere):
  ``serving_default``  ``encoded_images``: string ``[B]`` JPEG/PNG/GIF/BMP bytes, images of any sizes.
  ``image_tensor``     ``images``: uint8 ``[B, H, W, 3]``.
  ``tf_example``       ``serialized_examples``: string ``[B]`` ``tf.train.Example`` with ``image/encoded``.
  ``sample_rois``      ``proposals`` float32 ``[B, N, 4]``, ``num_proposals`` int32 ``[B]``, ``gt_boxes`` float32
                       ``[B, M, 4]`` (padded with -1), ``gt_classes`` int32 ``[B, M]`` → the ``RoiSampler``'s outputs.
Image signatures return ``proposal_boxes`` float32 ``[B, N, 4]`` yxyx in the *original* image's pixels (zeros past
``num_proposals``), ``proposal_scores`` ``[B, N]``, ``num_proposals`` int32 ``[B]`` and ``image_scale`` float32
``[B, 2]`` (canvas pixels per original pixel, ``(sy, sx)``). Resizing is the model's ``resize`` policy through
``rpn_tf.data.resize.resize_to_canvas`` — the encoder's function, so served pixels equal training pixels — and the
proposals come from ``RPNModel.proposals_in_original_pixels``, as ``model.predict``'s do.
"""

from __future__ import annotations

import tensorflow as tf

from rpn_tf.data.resize import resize_to_canvas
from rpn_tf.ops.roi_sampling import RoiSampler

IMAGE_SIGNATURES = ("serving_default", "image_tensor", "tf_example")
IMAGE_OUTPUTS = ("proposal_boxes", "proposal_scores", "num_proposals", "image_scale")
# Decoded images are bounded: an image's height × width is read from its header (JPEG, PNG, GIF, BMP) and checked
# before decoding (TF itself caps only JPEG). 36 Mpx = 6000 × 6000 ≈ 108 MB as uint8.
DEFAULT_MAX_PIXELS = 36_000_000
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM")


def _header_uint(data, offset, length, little_endian):
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, length), tf.uint8), tf.int64)
    weights = 256 ** tf.range(length, dtype=tf.int64)
    return tf.reduce_sum(raw * (weights if little_endian else tf.reverse(weights, [0])))


def header_size(data):
    """``(height, width)`` int64 of an encoded JPEG / PNG / GIF / BMP from its header, without decoding."""
    head = tf.strings.substr(data, 0, 4)

    def bmp():
        height = _header_uint(data, 22, 4, True)
        height = tf.where(height >= 2 ** 31, 2 ** 32 - height, height)  # top-down BMPs store -height
        return tf.stack([height, _header_uint(data, 18, 4, True)])

    return tf.case([
        (tf.strings.substr(head, 0, 3) == b"\xff\xd8\xff",
         lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)),
        (head == b"\x89PNG", lambda: tf.stack([_header_uint(data, 20, 4, False), _header_uint(data, 16, 4, False)])),
        (tf.strings.substr(head, 0, 3) == b"GIF",
         lambda: tf.stack([_header_uint(data, 8, 2, True), _header_uint(data, 6, 2, True)]))],
        default=bmp)


def check_encoded_images(encoded, input_name):
    """Assertions that ``encoded`` (string ``[B]``) holds non-empty JPEG/PNG/GIF/BMP data, naming the elements."""
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


class RpnServingModule:
    """Serving functions of an ``RPNModel`` (plus a ``RoiSampler``), one per input type.

    Each ``serve_*`` method works eagerly or traced; ``endpoints()`` gives them with their input signatures for
    ``keras.export.ExportArchive`` (see ``rpn_tf.serving.exporter``).
    """

    def __init__(self, model, roi_sampler: RoiSampler | None = None, max_pixels=DEFAULT_MAX_PIXELS):
        self.model = model
        self.max_pixels = int(max_pixels)
        self.roi_sampler = roi_sampler or RoiSampler(seed=0)
        self.image_size = tuple(model.image_size)

    def _infer(self, canvas, image_scale, valid_size, original_size):
        outputs = self.model.proposals_in_original_pixels(canvas, image_scale, valid_size, original_size)
        return {key: outputs[key] for key in IMAGE_OUTPUTS}

    def _decode_and_infer(self, encoded, input_name):
        with tf.control_dependencies(check_encoded_images(encoded, input_name)):
            encoded = tf.identity(encoded)
        (sizes,) = _map_naming_failures(lambda data: (header_size(data),), encoded,
                                        f"{input_name}: elements {{}} have an unreadable image header (truncated or "
                                        "corrupt)")
        too_large = sizes[:, 0] * sizes[:, 1] > self.max_pixels
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(too_large)),
            [f"{input_name}: elements", tf.where(too_large)[:, 0], "are images of (height, width)",
             tf.boolean_mask(sizes, too_large), f"pixels, more than the limit of {self.max_pixels} pixels "
             "(RpnServingModule / export_saved_model max_pixels)"], name=f"assert_{input_name.replace('/', '_')}_size")

        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            canvas, scale, valid_size = resize_to_canvas(image, self.image_size, self.model.resize)
            return canvas, scale, tf.cast(valid_size, tf.float32), tf.cast(tf.shape(image)[:2], tf.float32)

        with tf.control_dependencies([check]):
            decoded = _map_naming_failures(
                decode, tf.identity(encoded),
                f"{input_name}: elements {{}} could not be decoded (corrupt or truncated image data)")
        return self._infer(*decoded)

    def serve_encoded_images(self, encoded_images):
        return self._decode_and_infer(encoded_images, "encoded_images")

    def serve_image_tensor(self, images):
        return self._infer(*self.model.to_canvas(images))

    def serve_tf_example(self, serialized_examples):
        spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
        (encoded,) = _map_naming_failures(
            lambda serialized: (tf.io.parse_single_example(serialized, spec)["image/encoded"],),
            serialized_examples,
            "serialized_examples: elements {} are not tf.train.Example protos with a string 'image/encoded' feature")
        return self._decode_and_infer(encoded, "image/encoded")

    def sample_rois(self, proposals, num_proposals, gt_boxes, gt_classes):
        return self.roi_sampler(proposals, gt_boxes, gt_classes, num_proposals)

    def endpoints(self):
        """``{signature name: (function, input signature)}`` of every served signature."""
        return {
            "serving_default": (self.serve_encoded_images, [tf.TensorSpec([None], tf.string, "encoded_images")]),
            "image_tensor": (self.serve_image_tensor, [tf.TensorSpec([None, None, None, 3], tf.uint8, "images")]),
            "tf_example": (self.serve_tf_example, [tf.TensorSpec([None], tf.string, "serialized_examples")]),
            "sample_rois": (self.sample_rois, [tf.TensorSpec([None, None, 4], tf.float32, "proposals"),
                                               tf.TensorSpec([None], tf.int32, "num_proposals"),
                                               tf.TensorSpec([None, None, 4], tf.float32, "gt_boxes"),
                                               tf.TensorSpec([None, None], tf.int32, "gt_classes")]),
        }


def _map_naming_failures(fn, values, message):
    """``fn`` applied to each element of ``values`` (``[B]``), outputs stacked, as ``tf.map_fn`` would — but an
    element whose ``fn`` fails raises one ``InvalidArgumentError`` that names the failing element indices
    (``message.format(indices)``), instead of TensorFlow's error for that op, which names no element (and, for
    ``parse_example``, quotes the raw bytes, which Python clients cannot even decode when they are not UTF-8).

    The elements run through an in-graph ``tf.data`` map (parallel); failures are detected by comparing the indices
    that came out with those that went in, so nothing is dropped silently.
    """
    indices = tf.range(tf.size(values, out_type=tf.int64))
    dataset = tf.data.Dataset.from_tensor_slices((indices, values)).map(
        lambda index, value: (index, fn(value)), num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    outputs = dataset.element_spec[1]
    initial = (tf.zeros([0], tf.int64), tuple(tf.zeros([0, *spec.shape], spec.dtype) for spec in outputs))
    # Everything that arrives comes as one batch (the reduction runs at most once: no quadratic concatenation).
    done, stacked = dataset.batch(tf.maximum(tf.size(values, out_type=tf.int64), 1)).reduce(
        initial, lambda state, batch: batch)
    arrived = tf.scatter_nd(done[:, None], tf.ones_like(done, tf.bool), tf.shape(indices, tf.int64))
    failed = tf.where(tf.logical_not(arrived))[:, 0]
    head, tail = message.split("{}")
    check = tf.debugging.Assert(tf.size(failed) == 0, [head.rstrip(), failed, tail.strip()])
    with tf.control_dependencies([check]):
        return tuple(tf.identity(t) for t in stacked)
