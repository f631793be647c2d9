"""TFDS detection dicts (e.g. ``tfds.load("voc")``) → rpn-tf elements."""

from __future__ import annotations

import tensorflow as tf


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
