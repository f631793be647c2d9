"""rpn-tf train's dataset summary: a bounded read by default, the exact count when needed or asked for."""

import numpy as np
import tensorflow as tf

from rpn_tf.tools.training import dataset_summary


def elements(count, unknown_size=False):
    boxes = np.zeros((count, 2, 4), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices({"image": np.zeros((count, 4, 4, 3), np.uint8), "boxes": boxes})
    return dataset.filter(lambda element: True) if unknown_size else dataset


def test_a_small_dataset_is_counted_exactly():
    assert dataset_summary(elements(30), None)[:2] == (30, 60)
    assert dataset_summary(elements(30, unknown_size=True), None)[2] == "dataset: 30 images, 60 boxes"


def test_a_large_dataset_is_sampled_unless_the_exact_count_is_asked_for():
    images, boxes, line = dataset_summary(elements(250), None, sample=100)
    assert (images, boxes) == (250, 200) and "in the first 100" in line  # the cardinality is known
    images, boxes, line = dataset_summary(elements(250, unknown_size=True), None, sample=100)
    assert images is None and boxes == 200 and "more than 100 images" in line and "--count-dataset" in line
    assert dataset_summary(elements(250, unknown_size=True), None, exact=True)[:2] == (250, 500)
    seen = []
    probe = elements(250, unknown_size=True).map(
        lambda element: (tf.py_function(lambda: seen.append(1) or 0, [], tf.int32), element)[1])
    dataset_summary(probe, None, sample=100)
    assert len(seen) <= 101  # a bounded read (tf.data may prefetch one more)


def test_exactly_the_sample_size_is_counted_exactly():
    assert dataset_summary(elements(100, unknown_size=True), None, sample=100)[:2] == (100, 200)
