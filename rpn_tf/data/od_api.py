"""TF Object Detection API TFRecords: reader (→ rpn-tf elements) and writer (any adapter's dataset → records)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

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


def check_tfrecord_framing(path):
    """Walks the record framing of one TFRecord file (each record: an 8-byte length, a 4-byte CRC of it, the data and
    a 4-byte CRC of the data), reading 12 bytes per record and seeking over the data, and returns the number of
    records. A file that ends inside a record (truncated, e.g. by a killed writer) raises ``ValueError`` naming the
    file, the record and its byte offset — TensorFlow's own ``DataLossError`` names none of them. CRCs are left to the
    reader."""
    size = tf.io.gfile.stat(path).length
    count, offset = 0, 0
    with tf.io.gfile.GFile(path, "rb") as handle:
        while offset < size:
            header = handle.read(12)
            length = int.from_bytes(header[:8], "little") if len(header) == 12 else None
            if length is None or offset + 16 + length > size:
                raise ValueError(f"TFRecord file {path} is truncated: record {count} at byte {offset} "
                                 f"{'has an incomplete header' if length is None else f'declares {length} bytes'}"
                                 f" but the file ends at byte {size}")
            offset += 16 + length
            handle.seek(offset)
            count += 1
    return count


def read_od_tfrecords(pattern, num_parallel_calls=tf.data.AUTOTUNE, verify=True):
    """Reads TF Object Detection API TFRecords (files matching ``pattern``, a glob or a list).

    ``verify`` (default) first walks every file's record framing (``check_tfrecord_framing``: a seek per record, no
    data read), so a truncated file is named up front instead of failing mid-epoch with an anonymous
    ``DataLossError``."""
    files = sorted(tf.io.gfile.glob(pattern)) if isinstance(pattern, str) else list(pattern)  # gs:// too
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern!r}")
    if verify:
        for path in files:
            check_tfrecord_framing(path)
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
