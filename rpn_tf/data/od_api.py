"""TF Object Detection API TFRecords: reader (→ rpn-tf elements) and writer (any adapter's dataset → records)."""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf

from rpn_tf.data.records import DATA_LOSS_PREFIX, check_on_error

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


VERIFY_MODES = ("pipeline", "upfront", "none")


def _framed_records(path, size, on_error):
    """The records of one TFRecord file, with its framing checked as they stream: the bytes of the records read
    (16 + length each) must add up to the file's ``size`` at its end. A file that ends inside a record (its last
    header cut: TensorFlow's reader drops that record silently) or whose data cannot be read (``DataLossError``,
    which names no file) stops short of ``size``: ``on_error="raise"`` raises ``InvalidArgumentError`` naming the
    file, the record and the byte where its readable records end (a ``DataLossError`` — TensorFlow's type for a
    corrupted record — where ``data_loss_error`` translates it: ``fit``, ``evaluate``, the CLI), ``"skip"`` prints
    one warning line naming them and goes on
    (the records before that point were read). No extra read: one pass, as training reads the file anyway. A
    read error of the storage itself (e.g. a bucket that is unavailable) ends the file the same way and is
    reported as such: the message gives the byte, and ``check_tfrecord_framing`` tells a real truncation apart."""
    records = tf.data.TFRecordDataset(path).ignore_errors()  # a read error ends the file: the byte count names it
    end = tf.data.Dataset.from_tensors((tf.constant(b""), tf.constant(True)))
    tagged = records.map(lambda record: (record, tf.constant(False))).concatenate(end)

    def step(state, item):
        offset, index = state
        record, is_end = item
        whole = tf.logical_or(tf.logical_not(is_end), tf.equal(offset, size))
        # the wording data_loss_error() recognises (and turns into a DataLossError where the data are consumed)
        message = [DATA_LOSS_PREFIX, path, "is truncated or corrupt: record", index, "at byte", offset, "of", size,
                   "cannot be read"]
        if on_error == "raise":
            check = tf.debugging.Assert(whole, message, name="assert_tfrecord_framing")
        else:
            check = tf.cond(whole, tf.no_op,
                            lambda: tf.print("warning:", *message, "(the rest of the file is skipped)",
                                             output_stream=sys.stderr))
        with tf.control_dependencies([check]):
            length = tf.cast(tf.strings.length(record), tf.int64)
            offset = offset + tf.where(is_end, tf.constant(0, tf.int64), 16 + length)
            return (offset, index + 1), (record, is_end)

    start = (tf.constant(0, tf.int64), tf.constant(0, tf.int64))
    return (tagged.scan(start, step)
            .filter(lambda record, is_end: tf.logical_not(is_end)).map(lambda record, is_end: record))


def read_od_tfrecords(pattern, num_parallel_calls=tf.data.AUTOTUNE, verify="pipeline", on_error="raise"):
    """Reads TF Object Detection API TFRecords (files matching ``pattern``, a glob or a list), in file order.

    ``verify``: ``"pipeline"`` (default) checks each file's record framing as it streams (``_framed_records``: the
    record bytes must add up to the file size; no extra read), so a truncated or unreadable file is named — by
    default the first pass over it raises ``InvalidArgumentError`` at that point; ``"upfront"`` walks every file's
    framing before returning (``check_tfrecord_framing``: a seek per record — on a bucket, one ranged read per
    record); ``"none"``: TensorFlow's reader alone (a cut last header loses a record silently).
    ``on_error="skip"``: malformed records (a missing image, mismatched boxes, boxes outside [0, 1], undecodable
    data) and the unreadable rest of a truncated file are skipped, each with a warning naming it, instead of
    raising."""
    if verify is True or verify is False:  # the earlier boolean form
        verify = "upfront" if verify else "none"
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    check_on_error(on_error)
    files = sorted(tf.io.gfile.glob(pattern)) if isinstance(pattern, str) else list(pattern)  # gs:// too
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {pattern!r}")
    if verify == "upfront":
        for path in files:
            check_tfrecord_framing(path)
    if verify == "pipeline":
        sizes = [tf.io.gfile.stat(path).length for path in files]  # one metadata request per file
        records = tf.data.Dataset.from_tensor_slices((files, tf.constant(sizes, tf.int64))).interleave(
            lambda path, size: _framed_records(path, size, on_error), cycle_length=1)
    else:
        records = tf.data.TFRecordDataset(files)
    dataset = records.map(parse_od_example, num_parallel_calls=num_parallel_calls)
    return dataset.ignore_errors(log_warning=True) if on_error == "skip" else dataset


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
