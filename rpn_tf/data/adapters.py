"""Input adapters. Every adapter yields the same ``tf.data`` element::

    {"image": uint8 [H, W, 3], "boxes": float32 [n, 4] yxyx absolute pixels, "classes": int32 [n]}

which ``RpnTargetEncoder`` maps directly (``dataset.map(encoder)``). Images are read and decoded lazily in
``dataset.map(..., num_parallel_calls=AUTOTUNE)``; only annotations are held in memory.

Classes: 0 is background in rpn-tf, so object classes start at 1 (TFDS labels are shifted by +1; VOC names map
to 1..K in ``class_names`` order; COCO category ids are kept as they are, they start at 1).

Bad input raises an error naming the file or record. Adapters reading annotation files take
``on_error="skip"`` to drop bad records instead; the number dropped (and why) is in the returned
``SkipReport`` and is logged, so nothing disappears silently.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from rpn_tf.data.voc import read_voc_xml

logger = logging.getLogger(__name__)

ELEMENT_SIGNATURE = {
    "image": tf.TensorSpec([None, None, 3], tf.uint8),
    "boxes": tf.TensorSpec([None, 4], tf.float32),
    "classes": tf.TensorSpec([None], tf.int32),
}
BOX_TOLERANCE = 1.0  # pixels a box may extend past the image border before it counts as malformed


@dataclasses.dataclass
class SkipReport:
    """What an adapter left out: ``skipped`` records (file → reason) and ``excluded_boxes`` counts by reason
    (e.g. COCO ``iscrowd``, VOC ``difficult``)."""

    skipped: Dict[str, str] = dataclasses.field(default_factory=dict)
    excluded_boxes: Dict[str, int] = dataclasses.field(default_factory=lambda: collections.Counter())

    def log(self, source):
        if self.skipped:
            logger.warning("%s: skipped %d malformed records: %s", source, len(self.skipped),
                           "; ".join(f"{k}: {v}" for k, v in list(self.skipped.items())[:5]))
        for reason, count in self.excluded_boxes.items():
            logger.info("%s: excluded %d %s boxes", source, count, reason)


def _check_on_error(on_error):
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


def _file_dataset(records, num_parallel_calls):
    """``records``: list of (path, boxes [n, 4], classes [n]) → element dataset decoding files lazily."""
    paths = [path for path, _, _ in records]
    boxes = tf.ragged.constant([np.asarray(b, np.float32).reshape(-1, 4).tolist() for _, b, _ in records],
                               ragged_rank=1, inner_shape=(4,), dtype=tf.float32) if records else \
        tf.RaggedTensor.from_row_lengths(tf.zeros([0, 4]), tf.zeros([0], tf.int64))
    classes = tf.ragged.constant([np.asarray(c, np.int32).tolist() for _, _, c in records], dtype=tf.int32,
                                 ragged_rank=1) if records else \
        tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int32), tf.zeros([0], tf.int64))
    dataset = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), boxes, classes))

    def load(path, image_boxes, image_classes):
        return {"image": decode_image_file(path), "boxes": image_boxes, "classes": image_classes}

    return dataset.map(load, num_parallel_calls=num_parallel_calls)


# --- TFDS-style dicts -------------------------------------------------------------------------------------------

def from_tfds(dataset, class_offset=1, num_parallel_calls=tf.data.AUTOTUNE):
    """Adapts TFDS detection dicts (``image``, ``objects/bbox`` normalized yxyx, ``objects/label``), e.g. from
    ``tfds.load("voc")``. Labels become ``label + class_offset`` (default 1: 0 is background)."""

    def convert(example):
        if "image" not in example or "objects" not in example:
            raise KeyError(f"a TFDS detection example needs 'image' and 'objects', got {sorted(example)}")
        objects = example["objects"]
        image = tf.convert_to_tensor(example["image"])
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        normalized = tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4])
        in_range = tf.reduce_all((normalized >= 0.0) & (normalized <= 1.0))
        check = tf.debugging.Assert(in_range, ["objects/bbox must be normalized to [0, 1]; got", normalized],
                                    name="assert_tfds_bbox_normalized")
        with tf.control_dependencies([check]):
            boxes = normalized * tf.concat([size, size], axis=0)
        return {"image": tf.image.convert_image_dtype(image, tf.uint8) if image.dtype != tf.uint8 else image,
                "boxes": boxes, "classes": tf.cast(objects["label"], tf.int32) + class_offset}

    return dataset.map(convert, num_parallel_calls=num_parallel_calls)


# --- TF Object Detection API TFRecords --------------------------------------------------------------------------

_OD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/source_id": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
}


def parse_od_example(serialized):
    """One serialized TF OD API ``tf.train.Example`` → element. Missing ``image/encoded``, mismatched box /
    label counts and boxes outside [0, 1] raise ``InvalidArgumentError`` naming the record's filename/source id."""
    features = tf.io.parse_single_example(serialized, _OD_FEATURES)
    record = tf.strings.join([features["image/filename"], " (source_id ", features["image/source_id"], ")"])
    coords = [tf.sparse.to_dense(features[f"image/object/bbox/{k}"]) for k in ("ymin", "xmin", "ymax", "xmax")]
    labels = tf.cast(tf.sparse.to_dense(features["image/object/class/label"]), tf.int32)
    counts = tf.stack([tf.size(c) for c in coords] + [tf.size(labels)])
    normalized = tf.stack(coords, axis=1)
    checks = [
        tf.debugging.Assert(tf.reduce_all(counts == counts[0]),
                            ["TFRecord", record, "has different numbers of bbox coordinates and labels:", counts]),
        tf.debugging.Assert(tf.reduce_all((normalized >= 0.0) & (normalized <= 1.0)),
                            ["TFRecord", record, "has bbox coordinates outside [0, 1]"]),
    ]
    with tf.control_dependencies(checks):
        image = tf.io.decode_image(features["image/encoded"], channels=3, expand_animations=False)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    return {"image": image, "boxes": normalized * tf.concat([size, size], axis=0), "classes": labels}


def read_od_tfrecords(pattern, num_parallel_calls=tf.data.AUTOTUNE):
    """Reads TF Object Detection API TFRecords (files matching ``pattern``, a glob or a list)."""
    files = sorted(glob.glob(pattern)) if isinstance(pattern, str) else list(pattern)
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern!r}")
    return tf.data.TFRecordDataset(files).map(parse_od_example, num_parallel_calls=num_parallel_calls)


def _bytes_feature(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _float_feature(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def _int_feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def od_example(image, boxes, classes, filename="", image_format="png"):
    """One element (NumPy) → ``tf.train.Example`` with the TF OD API keys. PNG keeps pixels exact."""
    image = np.asarray(image, np.uint8)
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    encoded = (tf.io.encode_png(image) if image_format == "png" else tf.io.encode_jpeg(image, quality=95)).numpy()
    feature = {
        "image/encoded": _bytes_feature([encoded]),
        "image/format": _bytes_feature([image_format.encode()]),
        "image/height": _int_feature([height]),
        "image/width": _int_feature([width]),
        "image/filename": _bytes_feature([filename.encode()]),
        "image/source_id": _bytes_feature([filename.encode()]),
        "image/object/bbox/ymin": _float_feature((boxes[:, 0] / height).tolist()),
        "image/object/bbox/xmin": _float_feature((boxes[:, 1] / width).tolist()),
        "image/object/bbox/ymax": _float_feature((boxes[:, 2] / height).tolist()),
        "image/object/bbox/xmax": _float_feature((boxes[:, 3] / width).tolist()),
        "image/object/class/label": _int_feature(np.asarray(classes, np.int64).tolist()),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_od_tfrecords(dataset, path, image_format="png") -> int:
    """Writes any adapter's dataset as TF OD API TFRecords; returns the number of examples written."""
    count = 0
    with tf.io.TFRecordWriter(path) as writer:
        for element in dataset.as_numpy_iterator():
            writer.write(od_example(element["image"], element["boxes"], element["classes"],
                                    f"{count:08d}.{image_format}", image_format).SerializeToString())
            count += 1
    return count


# --- COCO instances JSON ----------------------------------------------------------------------------------------

def from_coco(annotation_file, image_dir, on_error="raise", num_parallel_calls=tf.data.AUTOTUNE):
    """COCO instances JSON (``bbox`` is ``[x, y, w, h]``) → ``(dataset, SkipReport)``.

    ``iscrowd`` boxes are excluded (they mark crowds, not instances; as in COCO training practice they are neither
    positives nor counted) and counted in the report. Images without annotations are kept (all-background)."""
    _check_on_error(on_error)
    try:
        with open(annotation_file) as file:
            coco = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{annotation_file}: cannot read COCO JSON: {error}") from error
    for key in ("images", "annotations"):
        if key not in coco:
            raise ValueError(f"{annotation_file}: missing '{key}'")
    report = SkipReport()
    by_image = collections.defaultdict(list)
    for annotation in coco["annotations"]:
        by_image[annotation.get("image_id")].append(annotation)
    records = []
    for image in coco["images"]:
        name = f"{annotation_file}: image {image.get('id')} ({image.get('file_name')})"
        try:
            for key in ("id", "file_name", "height", "width"):
                if key not in image:
                    raise ValueError(f"{name}: missing '{key}'")
            path = os.path.join(image_dir, image["file_name"])
            if not os.path.exists(path):
                raise ValueError(f"{name}: image file {path} not found")
            boxes, classes = [], []
            for annotation in by_image.get(image["id"], []):
                if annotation.get("iscrowd", 0):
                    report.excluded_boxes["iscrowd"] += 1
                    continue
                if "bbox" not in annotation or "category_id" not in annotation:
                    raise ValueError(f"{name}: annotation {annotation.get('id')} lacks 'bbox' or 'category_id'")
                x, y, w, h = annotation["bbox"]
                boxes.append([y, x, y + h, x + w])
                classes.append(int(annotation["category_id"]))
            check_boxes(boxes, (image["height"], image["width"]), name)
            records.append((path, boxes, classes))
        except ValueError as error:
            if on_error == "raise":
                raise
            report.skipped[name] = str(error)
    report.log(annotation_file)
    return _file_dataset(records, num_parallel_calls), report


# --- Pascal VOC folders -----------------------------------------------------------------------------------------

def from_voc(root, class_names: Optional[Sequence[str]] = None, include_difficult=False, on_error="raise",
             num_parallel_calls=tf.data.AUTOTUNE):
    """A VOC-layout folder (``Annotations/*.xml`` + ``JPEGImages/``) → ``(dataset, SkipReport, class_names)``.

    ``difficult`` objects are excluded by default, as in VOC practice (they are not scored in VOC evaluation and
    detectron2's VOC loader drops them); ``include_difficult=True`` keeps them. Class ids are 1 + the index in
    ``class_names`` (default: the sorted names found). An object of an unknown class is an error."""
    _check_on_error(on_error)
    xml_files = sorted(glob.glob(os.path.join(root, "Annotations", "*.xml")))
    if not xml_files:
        raise FileNotFoundError(f"no Annotations/*.xml under {root}")
    report = SkipReport()
    annotations = []
    for path in xml_files:
        try:
            annotations.append((path, read_voc_xml(path)))
        except ValueError as error:
            if on_error == "raise":
                raise
            report.skipped[path] = str(error)
    if class_names is None:
        class_names = sorted({name for _, annotation in annotations for name in annotation.names})
    class_ids = {name: index + 1 for index, name in enumerate(class_names)}
    records = []
    for path, annotation in annotations:
        try:
            image_name = annotation.filename or os.path.splitext(os.path.basename(path))[0] + ".jpg"
            image_path = os.path.join(root, "JPEGImages", image_name)
            if not os.path.exists(image_path):
                raise ValueError(f"{path}: image {image_path} not found")
            keep = np.ones(len(annotation.boxes), bool) if include_difficult else ~annotation.difficult
            report.excluded_boxes["difficult"] += int(np.sum(~keep))
            unknown = sorted({n for n, k in zip(annotation.names, keep) if k and n not in class_ids})
            if unknown:
                raise ValueError(f"{path}: unknown class names {unknown}")
            check_boxes(annotation.boxes[keep], annotation.image_size, path)
            records.append((image_path, annotation.boxes[keep],
                            [class_ids[n] for n, k in zip(annotation.names, keep) if k]))
        except ValueError as error:
            if on_error == "raise":
                raise
            report.skipped[path] = str(error)
    report.log(root)
    return _file_dataset(records, num_parallel_calls), report, list(class_names)


# --- Tiling -----------------------------------------------------------------------------------------------------

def _tile_starts(length, tile_size, step):
    """``0, step, 2·step, …`` below ``length - tile_size``, then one tile flush with the border."""
    last = tf.maximum(length - tile_size, 0)
    starts = tf.range(0, tf.maximum(last, 1), step)
    return tf.cond(last > 0, lambda: tf.concat([starts, [last]], axis=0), lambda: tf.zeros([1], tf.int32))


def tile_dataset(dataset, tile_size=400, overlap=100, min_visible=0.5):
    """Cuts every element into ``tile_size`` squares overlapping by ``overlap`` pixels (zero-padded at the
    bottom / right when the image is smaller). A box is kept in a tile when at least ``min_visible`` of its area
    lies inside, clipped to the tile; otherwise it is left out of that tile (it appears in a neighbour when the
    overlap exceeds the object size). Same rule as ``rpn_tf.data.tiling.tile_image``."""
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
            return {"image": window, "boxes": tf.boolean_mask(clipped, keep),
                    "classes": tf.boolean_mask(classes, keep)}

        return tf.data.Dataset.from_tensor_slices(origins).map(cut)

    return dataset.flat_map(tiles)


def from_deepforest(names: Optional[List[str]] = None, num_parallel_calls=tf.data.AUTOTUNE):
    """The deepforest images (VOC XML beside PNGs) as an element dataset (class 1 = tree)."""
    from rpn_tf.data import deepforest

    data_dir = deepforest.deepforest_data_dir()
    names = names or list(deepforest.TRAIN_IMAGES)
    records = []
    for name in names:
        annotation = read_voc_xml(os.path.join(data_dir, name + ".xml"))
        check_boxes(annotation.boxes, annotation.image_size, name)
        records.append((os.path.join(data_dir, name + ".png"), annotation.boxes, [1] * len(annotation.boxes)))
    return _file_dataset(records, num_parallel_calls)
