"""Shared pieces of the input adapters: the element format, box checks, lazy image decoding and the skip report.

Every adapter yields the same ``tf.data`` element::

    {"image": uint8 [H, W, 3], "boxes": float32 [n, 4] yxyx absolute pixels, "classes": int32 [n]}

which ``RpnTargetEncoder`` maps directly (``dataset.map(encoder)``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import re
from typing import Dict

import numpy as np
import tensorflow as tf

logger = logging.getLogger("rpn_tf.data")

ELEMENT_SIGNATURE = {
    "image": tf.TensorSpec([None, None, 3], tf.uint8),
    "boxes": tf.TensorSpec([None, 4], tf.float32),
    "classes": tf.TensorSpec([None], tf.int32),
}
BOX_TOLERANCE = 1.0  # pixels a box may extend past the image border before it counts as malformed


@dataclasses.dataclass
class SkipReport:
    """What an adapter left out: ``skipped`` records (file → reason) and ``excluded_boxes`` counts by reason
    (e.g. COCO ``iscrowd``, VOC ``difficult``), and ``categories`` (class id → source category) where an adapter
    renumbers classes."""

    skipped: Dict[str, str] = dataclasses.field(default_factory=dict)
    excluded_boxes: Dict[str, int] = dataclasses.field(default_factory=lambda: collections.Counter())
    categories: Dict[int, dict] = dataclasses.field(default_factory=dict)

    def log(self, source):
        if self.skipped:
            logger.warning("%s: skipped %d malformed records: %s", source, len(self.skipped),
                           "; ".join(f"{k}: {v}" for k, v in list(self.skipped.items())[:5]))
        for reason, count in self.excluded_boxes.items():
            logger.info("%s: excluded %d %s boxes", source, count, reason)


DATA_LOSS_PREFIX = "TFRecord file"
_DATA_LOSS = re.compile(r"\[TFRecord file\] \[(?P<path>.*?)\] \[is truncated or corrupt: record\] \[(?P<index>\d+)\] "
                        r"\[at byte\] \[(?P<offset>\d+)\] \[of\] \[(?P<size>\d+)\]")
# TensorFlow's decorations of an op's error: the function, node and op names, the "Graph execution error" preamble
_NOISE = (re.compile(r"\{\{function_node [^}]*\}\}\s*"), re.compile(r"\n?\s*\[\[.*?\]\]", re.S),
          re.compile(r"\s*\[Op:[^\]]*\]( name: \S*)?"), re.compile(r"^\s*Graph execution error:\s*"),
          re.compile(r"Detected at node .*?(\n\n|$)", re.S))


def clean_error_message(error):
    """The meaningful text of a TensorFlow ``OpError`` (or any exception): without ``{{function_node …}}``,
    ``[[{{node …}}]]``, ``[Op:…]`` and the "Graph execution error" preamble."""
    text = getattr(error, "message", None) or str(error)
    for pattern in _NOISE:
        text = pattern.sub("", text)
    text = text.strip()
    if text.startswith("assertion failed: "):
        text = text[len("assertion failed: "):]
    return text


def data_loss_error(error):
    """A ``tf.errors.DataLossError`` naming the file, record and byte for the framing check of a TFRecord file
    (``od_api``) inside ``error``; ``None`` for any other error. (Graph code can only raise ``InvalidArgument``
    from an assertion; this restores the type TensorFlow's own reader uses for a corrupted record.)"""
    match = _DATA_LOSS.search(getattr(error, "message", None) or str(error))
    if match is None:
        return None
    index = int(match["index"])
    return tf.errors.DataLossError(
        None, None, f"TFRecord file {match['path']} is truncated or corrupt: record {index} at byte "
                    f"{match['offset']} (of {match['size']}) cannot be read; the {index} records before it were read")


@contextlib.contextmanager
def named_data_errors():
    """Around code that consumes a dataset (``fit``, ``evaluate``, the CLI): a TFRecord framing failure leaves as a
    ``DataLossError`` naming the file, the record and the byte, without TensorFlow's internals."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        translated = data_loss_error(error)
        if translated is None:
            raise
        raise translated from None


def check_on_error(on_error):
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def check_boxes(boxes, image_size, record):
    """Raises ``ValueError`` naming ``record`` if yxyx ``boxes`` are non-finite, inverted or outside the image."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    height, width = image_size
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{record}: box coordinates are not finite")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise ValueError(f"{record}: inverted box (y2 < y1 or x2 < x1)")
    outside = ((boxes[:, :2] < -BOX_TOLERANCE).any(axis=1) | (boxes[:, 2] > height + BOX_TOLERANCE)
               | (boxes[:, 3] > width + BOX_TOLERANCE))
    if np.any(outside):
        raise ValueError(f"{record}: box {boxes[outside][0].tolist()} lies outside the {height}x{width} image")


def decode_image_file(path):
    """Reads and decodes a JPEG/PNG/GIF/BMP file to uint8 ``[H, W, 3]``; errors name the file."""
    data = tf.io.read_file(path)
    check = tf.debugging.Assert(tf.strings.length(data) > 0, ["empty image file:", path])
    with tf.control_dependencies([check]):
        return tf.io.decode_image(data, channels=3, expand_animations=False)


def file_dataset(records, num_parallel_calls, image_ids=None):
    """``records``: list of (path, boxes [n, 4], classes [n]) → element dataset decoding files lazily; with
    ``image_ids`` (one int per record: a COCO file's ids) the elements carry their ``image_id``."""
    paths = [path for path, _, _ in records]
    boxes = tf.ragged.constant([np.asarray(b, np.float32).reshape(-1, 4).tolist() for _, b, _ in records],
                               ragged_rank=1, inner_shape=(4,), dtype=tf.float32) if records else \
        tf.RaggedTensor.from_row_lengths(tf.zeros([0, 4]), tf.zeros([0], tf.int64))
    classes = tf.ragged.constant([np.asarray(c, np.int32).tolist() for _, _, c in records], dtype=tf.int32,
                                 ragged_rank=1) if records else \
        tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32), tf.zeros([0], tf.int64))
    ids = tf.constant(image_ids if image_ids is not None else [0] * len(paths), tf.int64)
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), boxes, classes, ids))

    def load(path, image_boxes, image_classes, image_id):
        element = {"image": decode_image_file(path), "boxes": image_boxes, "classes": image_classes}
        if image_ids is not None:
            element["image_id"] = image_id
        return element

    return dataset.map(load, num_parallel_calls=num_parallel_calls)


def image_file_size(path, record):
    """``(height, width)`` of an image file read from its header (no decoding); ``ValueError`` naming ``record``
    if the file is no readable JPEG / PNG / GIF / BMP."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"{record}: {path} is not a readable image ({type(error).__name__}: {error})") from error
    return height, width


def check_declared_size(path, declared_size, record):
    """The decoded image's ``(height, width)``; ``ValueError`` naming ``record`` if the annotation declares
    another size (boxes would be checked against the wrong image)."""
    actual = image_file_size(path, record)
    if tuple(int(v) for v in declared_size) != actual:
        raise ValueError(f"{record}: the annotation declares a {declared_size[0]}x{declared_size[1]} image but "
                         f"{path} is {actual[0]}x{actual[1]}")
    return actual


def verify_image_file(path, record):
    """Decodes the whole image file once (Pillow); ``ValueError`` naming ``record`` and the file if its data is
    corrupt or truncated — what a header check cannot see, and what would otherwise fail inside ``tf.data``
    without the file name."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # noqa: BLE001  (Pillow raises many types for bad data)
        raise ValueError(f"{record}: {path} is corrupt or truncated ({type(error).__name__}: {error})") from error
