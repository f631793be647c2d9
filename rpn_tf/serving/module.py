"""The served graph of an ``RPNModel`` (decoding, resizing, the network, proposals and ROI sampling) or of a
``FasterRCNN`` (the same image signatures, returning detections).

Signatures (batch size ``None`` everywhere):
  ``serving_default``  ``encoded_images``: string ``[B]`` JPEG/PNG/BMP bytes, images of any sizes (GIFs are
                       refused: their decoded size cannot be bounded from the header).
  ``image_tensor``     ``images``: uint8 ``[B, H, W, 3]``.
  ``tf_example``       ``serialized_examples``: string ``[B]`` ``tf.train.Example`` with ``image/encoded``.
  ``sample_rois``      ``proposals`` float32 ``[B, N, 4]``, ``num_proposals`` int32 ``[B]``, ``gt_boxes`` float32
                       ``[B, M, 4]`` (padded with -1), ``gt_classes`` int32 ``[B, M]`` → the ``RoiSampler``'s outputs.
Image signatures return ``proposal_boxes`` float32 ``[B, N, 4]`` yxyx in the *original* image's pixels (zeros past
``num_proposals``), ``proposal_scores`` ``[B, N]``, ``num_proposals`` int32 ``[B]`` and ``image_scale`` float32
``[B, 2]`` (canvas pixels per original pixel, ``(sy, sx)``). Resizing is the model's ``resize`` policy through
``rpn_tf.data.resize.resize_to_canvas`` — the encoder's function, so served pixels equal training pixels — and the
proposals come from ``RPNModel.proposals_in_original_pixels``, as ``model.predict``'s do. A ``FasterRCNN``'s image
signatures return ``DETECTOR_OUTPUTS`` (``detection_boxes`` in the original pixels, ``detection_scores``,
``detection_classes``, ``num_detections``, ``image_scale``) from ``FasterRCNN.detections_in_original_pixels``.
"""

from __future__ import annotations

import tensorflow as tf

from rpn_tf.config import canvas_varies, inference_canvas
from rpn_tf.data.resize import resize_to_canvas, trim_canvas
from rpn_tf.ops.roi_sampling import RoiSampler

IMAGE_SIGNATURES = ("serving_default", "image_tensor", "tf_example")
IMAGE_OUTPUTS = ("proposal_boxes", "proposal_scores", "num_proposals", "image_scale")
# A FasterRCNN's image signatures: the TF Object Detection API's names (boxes in the original image's pixels,
# classes 1…K and num_detections as float32).
DETECTOR_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections", "image_scale")
# Decoded images are bounded: an image's height × width is read from its header (JPEG, PNG, BMP) and checked
# before decoding (TF itself caps only JPEG). 36 Mpx = 6000 × 6000 ≈ 108 MB as uint8. A request holds at most
# DEFAULT_MAX_BATCH_SIZE elements and, together, four images' worth of pixels (docs/reliability.md: the memory a
# served model keeps is its largest decode and batch, a high-water mark of TensorFlow's allocator, not a leak).
DEFAULT_MAX_PIXELS = 36_000_000
DEFAULT_MAX_BATCH_SIZE = 32
REQUEST_PIXELS_PER_IMAGE_LIMIT = 4
# The NMS baked into a served graph, chosen by the export (never by the exporting machine): "combined"
# (tf.image.combined_non_max_suppression, CPU kernels only: the fastest on a CPU server) or "padded" (rpn-tf's NMS
# and the gather ROI Align: every op has a GPU kernel, and the graph compiles under XLA).
SERVED_NMS = ("combined", "padded")
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

    def __init__(self, model, roi_sampler: RoiSampler | None = None, max_pixels=DEFAULT_MAX_PIXELS, nms="combined",
                 max_batch_size=DEFAULT_MAX_BATCH_SIZE, max_request_pixels=None):
        if nms not in SERVED_NMS:
            raise ValueError(f"nms must be one of {SERVED_NMS}, got {nms!r}")
        self.model = model
        self.max_pixels = int(max_pixels)
        self.max_batch_size = int(max_batch_size)
        self.max_request_pixels = int(max_request_pixels or REQUEST_PIXELS_PER_IMAGE_LIMIT * self.max_pixels)
        if min(self.max_pixels, self.max_batch_size, self.max_request_pixels) < 1:
            raise ValueError(f"max_pixels, max_batch_size and max_request_pixels must be >= 1, got {self.max_pixels}, "
                             f"{self.max_batch_size}, {self.max_request_pixels}")
        self.nms = nms
        self.roi_sampler = roi_sampler or RoiSampler(seed=0)
        self.image_size = inference_canvas(model.resize, model.image_size)  # the canvas decoded images go onto

    @property
    def is_detector(self) -> bool:
        """Whether the model is a detector (``FasterRCNN``): it serves ``DETECTOR_OUTPUTS`` and no ``sample_rois``."""
        return hasattr(self.model, "detections_in_original_pixels")

    def _infer(self, canvas, image_scale, valid_size, original_size):
        # nms="padded" serves the XLA-compilable graph (padded NMS, gather ROI Align: every op has a GPU kernel)
        outputs = self.model.outputs_in_original_pixels(canvas, image_scale, valid_size, original_size,
                                                        xla=self.nms == "padded")
        return {key: outputs[key] for key in (DETECTOR_OUTPUTS if self.is_detector else IMAGE_OUTPUTS)}

    def _batch_check(self, batch_size, input_name):
        """An assertion that a request holds at most ``max_batch_size`` elements."""
        return tf.debugging.Assert(
            batch_size <= self.max_batch_size,
            [f"{input_name}: a request of", batch_size, f"elements, more than the limit of {self.max_batch_size} "
             "(export_saved_model max_batch_size): split it"], name="assert_batch_size")

    def _decode_and_infer(self, encoded, input_name):
        checks = check_encoded_images(encoded, input_name)
        checks.append(self._batch_check(tf.size(encoded), input_name))
        is_gif = tf.strings.substr(encoded, 0, 3) == b"GIF"
        checks.append(_assert_named(is_gif, f"{input_name}: elements",
                                    "are GIF images, which are not served: a GIF's frames may be larger than the size "
                                    "its header declares, and every frame is decoded, so its cost cannot be bounded "
                                    "before decoding; send PNG, JPEG or BMP"))
        with tf.control_dependencies(checks):
            encoded = tf.identity(encoded)
        height, width = self.image_size

        # Every element's size from its header before anything is decoded: each within max_pixels, all together
        # within max_request_pixels (the decoding work of one request is bounded before it starts).
        (sizes,), header_ok = _map_catching(lambda data: (header_size(data),), encoded)
        pixels = sizes[:, 0] * sizes[:, 1]
        too_large = pixels > self.max_pixels
        indices = tf.where(header_ok)[:, 0]
        header_checks = [
            _assert_named(tf.logical_not(header_ok), f"{input_name}: elements", "have an unreadable image header "
                          "(truncated or corrupt)"),
            tf.debugging.Assert(
                tf.logical_not(tf.reduce_any(too_large)),
                [f"{input_name}: elements", tf.boolean_mask(indices, too_large), "are images of (height, width)",
                 tf.boolean_mask(sizes, too_large), f"pixels, more than the limit of {self.max_pixels} pixels "
                 "(RpnServingModule / export_saved_model max_pixels)"],
                name=f"assert_{input_name.replace('/', '_')}_size"),
            tf.debugging.Assert(
                tf.reduce_sum(pixels) <= self.max_request_pixels,
                [f"{input_name}: the request's images hold", tf.reduce_sum(pixels), "pixels together, more than the "
                 f"limit of {self.max_request_pixels} per request (export_saved_model max_request_pixels): split it"],
                name=f"assert_{input_name.replace('/', '_')}_request_pixels")]
        with tf.control_dependencies(header_checks):
            encoded = tf.identity(encoded)

        def read(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            canvas, scale, valid_size = resize_to_canvas(image, self.image_size, self.model.resize)
            return (tf.ensure_shape(canvas, [height, width, 3]), scale, tf.cast(valid_size, tf.float32),
                    tf.cast(tf.shape(image)[:2], tf.float32))

        decoded, arrived = _map_catching(read, encoded)
        check = _assert_named(tf.logical_not(arrived), f"{input_name}: elements",
                              "could not be decoded (corrupt or truncated image data)")
        with tf.control_dependencies([check]):  # from here on every element arrived, in order
            canvas, image_scale, valid_size, original_size = (tf.identity(t) for t in decoded)
        if canvas_varies(self.model.resize):  # the batch's own canvas, as torchvision batches
            canvas = trim_canvas(canvas, valid_size, self.model.resize.size_divisible)
        return self._infer(canvas, image_scale, valid_size, original_size)

    def serve_encoded_images(self, encoded_images):
        return self._decode_and_infer(encoded_images, "encoded_images")

    def serve_image_tensor(self, images):
        with tf.control_dependencies([self._batch_check(tf.shape(images)[0], "images")]):
            images = tf.identity(images)
        return self._infer(*self.model.to_canvas(images))

    def serve_tf_example(self, serialized_examples):
        with tf.control_dependencies([self._batch_check(tf.size(serialized_examples), "serialized_examples")]):
            serialized_examples = tf.identity(serialized_examples)
        spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
        (encoded,), arrived = _map_catching(
            lambda serialized: (tf.io.parse_single_example(serialized, spec)["image/encoded"],), serialized_examples)
        check = _assert_named(tf.logical_not(arrived), "serialized_examples: elements",
                              "are not tf.train.Example protos with a string 'image/encoded' feature")
        with tf.control_dependencies([check]):
            return self._decode_and_infer(tf.identity(encoded), "image/encoded")

    def sample_rois(self, proposals, num_proposals, gt_boxes, gt_classes):
        return self.roi_sampler(proposals, gt_boxes, gt_classes, num_proposals)

    def endpoints(self):
        """``{signature name: (function, input signature)}`` of every served signature (a detector's: the image
        signatures only)."""
        endpoints = {
            "serving_default": (self.serve_encoded_images, [tf.TensorSpec([None], tf.string, "encoded_images")]),
            "image_tensor": (self.serve_image_tensor, [tf.TensorSpec([None, None, None, 3], tf.uint8, "images")]),
            "tf_example": (self.serve_tf_example, [tf.TensorSpec([None], tf.string, "serialized_examples")]),
            "sample_rois": (self.sample_rois, [tf.TensorSpec([None, None, 4], tf.float32, "proposals"),
                                               tf.TensorSpec([None], tf.int32, "num_proposals"),
                                               tf.TensorSpec([None, None, 4], tf.float32, "gt_boxes"),
                                               tf.TensorSpec([None, None], tf.int32, "gt_classes")]),
        }
        if self.is_detector:
            del endpoints["sample_rois"]
        return endpoints


def _pipeline_options():
    """A plain, cheap in-graph pipeline: no autotuning, no graph rewrites. The default optimizations rewrite the
    dataset graph each time the served function runs it (~50 ms a call on 2 cores: 8x the tensor signature's
    whole call); these elements need none of it."""
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    options.experimental_warm_start = False
    options.deterministic = True
    return options


def _map_catching(fn, values):
    """``fn`` applied to each element of ``values`` (``[B]``), as ``tf.map_fn`` would, but an element whose ``fn``
    fails is left out instead of failing the call: returns ``(outputs, arrived)`` — the outputs of the elements that
    succeeded, stacked in order, and bool ``[B]`` saying which did. Callers name the others in their error
    (``_assert_named``) instead of TensorFlow's error for the failing op, which names no element (and, for
    ``parse_example``, quotes the raw bytes, which Python clients cannot even decode when they are not UTF-8).

    The elements run through an in-graph ``tf.data`` map whose errors are ignored; nothing is dropped silently:
    ``arrived`` compares the indices that came out with those that went in. The pipeline is read with
    ``get_single_element`` (one batch of everything that arrived, plus a sentinel row so that it is never empty),
    sequentially, without tf.data's autotuning and graph rewrites: well under a millisecond of overhead per call (a
    parallel map read by ``reduce`` with the default options cost ~60 ms; ``benchmarks/bench_proposals.py``).
    """
    count = tf.size(values, out_type=tf.int64)
    indices = tf.range(count)
    mapped = tf.data.Dataset.from_tensor_slices((indices, values)).map(
        lambda index, value: (index, fn(value))).ignore_errors()
    specs = mapped.element_spec[1]
    undefined = [spec for spec in specs if not spec.shape.is_fully_defined()]
    if undefined:  # the sentinel row must batch with the real ones
        raise ValueError(f"_map_catching needs outputs of static shapes, got {undefined}")
    sentinel = tf.data.Dataset.from_tensors(
        (tf.constant(-1, tf.int64), tuple(tf.zeros(spec.shape, spec.dtype) for spec in specs)))
    done, stacked = mapped.concatenate(sentinel).batch(count + 1).with_options(_pipeline_options()) \
        .get_single_element()
    done = done[:-1]
    arrived = tf.scatter_nd(done[:, None], tf.ones_like(done, tf.bool), tf.shape(indices, tf.int64))
    return tuple(t[:-1] for t in stacked), arrived


def _assert_named(failed, head, tail):
    """An assertion that no element of bool ``failed`` ``[B]`` is set, naming those that are."""
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(failed)), [head, tf.where(failed)[:, 0], tail])
