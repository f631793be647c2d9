import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import rpn_tf
from rpn_tf import box_ops


def test_iou_hand_computed_with_tie():
    # 3 boxes × 4 boxes; the second column ties between rows 0 and 1 (both 0.5).
    boxes_a = tf.constant([[0, 0, 10, 10], [0, 5, 10, 15], [20, 20, 30, 30.]])
    boxes_b = tf.constant([[0, 0, 10, 10], [0, 0, 10, 20], [5, 5, 15, 15], [40, 40, 40, 50.]])
    expected = np.array([
        [1.0, 0.5, 25 / 175, 0.0],
        [1 / 3, 0.5, 50 / 150, 0.0],
        [0.0, 0.0, 0.0, 0.0],  # disjoint; and the last box has zero area: IoU 0, never NaN
    ])
    np.testing.assert_allclose(rpn_tf.iou_matrix(boxes_a, boxes_b).numpy(), expected, rtol=1e-6)


def test_iou_batched_and_empty():
    boxes = tf.random.uniform([2, 5, 4])
    boxes = tf.concat([tf.minimum(boxes[..., :2], boxes[..., 2:]), tf.maximum(boxes[..., :2], boxes[..., 2:])], -1)
    assert rpn_tf.iou_matrix(boxes, boxes[:, :3]).shape == (2, 5, 3)
    assert rpn_tf.iou_matrix(boxes[0], tf.zeros([0, 4])).shape == (5, 0)


@pytest.mark.parametrize("fmt, expected", [
    ("yxyx", [10, 20, 30, 60]),
    ("xyxy", [20, 10, 60, 30]),
    ("xywh", [20, 10, 40, 20]),
])
def test_convert_formats(fmt, expected):
    yxyx = tf.constant([[10, 20, 30, 60.]])
    np.testing.assert_allclose(rpn_tf.convert_boxes(yxyx, "yxyx", fmt).numpy()[0], expected)
    np.testing.assert_allclose(rpn_tf.convert_boxes(tf.constant([expected], tf.float32), fmt, "yxyx").numpy()[0],
                               [10, 20, 30, 60])


def test_convert_normalized():
    yxyx = tf.constant([[10, 20, 30, 60.]])
    normalized = rpn_tf.convert_boxes(yxyx, "yxyx", "xyxy", image_size=(100, 200), target_normalized=True)
    np.testing.assert_allclose(normalized.numpy()[0], [0.1, 0.1, 0.3, 0.3])
    back = rpn_tf.convert_boxes(normalized, "xyxy", "yxyx", image_size=(100, 200), source_normalized=True)
    np.testing.assert_allclose(back.numpy()[0], [10, 20, 30, 60], rtol=1e-6)
    with pytest.raises(ValueError, match="image_size"):
        rpn_tf.convert_boxes(yxyx, target_normalized=True)
    with pytest.raises(ValueError, match="box_format"):
        rpn_tf.convert_boxes(yxyx, "cxcywh")


def test_encode_known_values_and_weights():
    anchors = tf.constant([[0, 0, 10, 20.]])
    boxes = tf.constant([[5, 10, 25, 30.]])  # centre (15, 20) vs (5, 10); size 20×20 vs 10×20
    deltas = rpn_tf.encode_deltas(boxes, anchors).numpy()[0]
    np.testing.assert_allclose(deltas, [1.0, 0.5, math.log(2.0), 0.0], rtol=1e-6)
    weighted = rpn_tf.encode_deltas(boxes, anchors, (10.0, 10.0, 5.0, 5.0)).numpy()[0]
    np.testing.assert_allclose(weighted, [10.0, 5.0, 5 * math.log(2.0), 0.0], rtol=1e-6)


def test_decode_clamps_scale():
    anchors = tf.constant([[0, 0, 16, 16.]])
    boxes = rpn_tf.decode_deltas(tf.constant([[0, 0, 100.0, 100.0]]), anchors).numpy()[0]
    assert np.all(np.isfinite(boxes))
    np.testing.assert_allclose(boxes[2] - boxes[0], 1000.0, rtol=1e-4)  # exp(log(1000/16)) * 16


@settings(max_examples=60, deadline=None)
@given(
    # Sizes within the decode clamp: box / anchor < 1000 / 16.
    anchor=st.tuples(st.floats(-100, 100), st.floats(-100, 100), st.floats(16, 300), st.floats(16, 300)),
    box=st.tuples(st.floats(-100, 100), st.floats(-100, 100), st.floats(1, 300), st.floats(1, 300)),
    weights=st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]),
)
def test_encode_decode_round_trip(anchor, box, weights):
    def to_yxyx(y, x, h, w):
        return [y, x, y + h, x + w]
    anchors = tf.constant([to_yxyx(*anchor)], tf.float64)
    boxes = tf.constant([to_yxyx(*box)], tf.float64)
    decoded = rpn_tf.decode_deltas(rpn_tf.encode_deltas(boxes, anchors, weights), anchors, weights)
    np.testing.assert_allclose(decoded.numpy(), boxes.numpy(), atol=1e-6)


def test_clip_boxes_per_image_sizes():
    boxes = tf.constant([[[-5, -5, 50, 50.]], [[-5, -5, 50, 50.]]])
    clipped = rpn_tf.clip_boxes(boxes, tf.constant([[40, 30], [100, 100]])).numpy()
    np.testing.assert_allclose(clipped[:, 0], [[0, 0, 40, 30], [0, 0, 50, 50]])
    np.testing.assert_allclose(rpn_tf.clip_boxes(boxes[0], (20, 20)).numpy(), [[0, 0, 20, 20]])


def test_box_area_of_inverted_is_zero():
    np.testing.assert_allclose(box_ops.box_area(tf.constant([[0, 0, 2, 3.], [5, 5, 1, 9.]])).numpy(), [6, 0])
