import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
from reference import iou_np


def greedy_nms_np(boxes, scores, max_output, iou_threshold):
    """Textbook greedy NMS over score-sorted boxes (scores ≤ 0 are never kept)."""
    kept = []
    for index in range(len(boxes)):
        if scores[index] <= 0:
            continue
        if kept and (iou_np(boxes[kept], boxes[index:index + 1])[:, 0] > iou_threshold).any():
            continue
        kept.append(index)
        if len(kept) == max_output:
            break
    return kept


def random_sorted_boxes(rng, batch, count, extent=200.0):
    corners = rng.uniform(0, extent, (batch, count, 2))
    sizes = rng.uniform(5, 60, (batch, count, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=-1).astype(np.float32)
    scores = -np.sort(-rng.uniform(0, 1, (batch, count)), axis=1).astype(np.float32)
    return boxes, scores


def traced_nms(boxes, scores, max_output, iou_threshold, **kwargs):
    function = tf.function(lambda b, s, v: rpn_tf.padded_nms(b, s, max_output, iou_threshold, valid=v, **kwargs),
                           autograph=False)
    return function(boxes, scores, scores > 0)


@pytest.mark.parametrize("tile_size,cases", [(3, [(60, 20), (40, 100)]),
                                             (64, [(300, 50), (777, 400), (40, 100)]),
                                             (512, [(300, 50), (777, 400)])])
def test_padded_nms_equals_greedy_reference_whatever_the_tile(tile_size, cases):
    rng = np.random.default_rng(tile_size)
    for count, max_output in cases:
        boxes, scores = random_sorted_boxes(rng, 2, count)
        scores[1, -10:] = 0.0  # invalid candidates at the end
        out_boxes, out_scores, num_valid = traced_nms(boxes, scores, max_output, 0.7, tile_size=tile_size)
        assert out_boxes.shape == (2, max_output, 4) and out_scores.shape == (2, max_output)
        for image in range(2):
            expected = greedy_nms_np(boxes[image], scores[image], max_output, 0.7)
            assert int(num_valid[image]) == len(expected)
            np.testing.assert_array_equal(out_boxes[image, :len(expected)], boxes[image][expected])
            np.testing.assert_array_equal(out_scores[image, :len(expected)], scores[image][expected])
            assert not out_boxes[image, len(expected):].numpy().any()
            assert not out_scores[image, len(expected):].numpy().any()


def test_padded_nms_chain_and_ties():
    # Box 1 is suppressed by box 0, so box 2 (which overlaps only box 1) survives: greedy, not "any overlap".
    boxes = np.array([[[0, 0, 10, 10], [0, 2, 10, 12], [0, 4, 10, 14], [50, 50, 60, 60]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7, 0.7]], np.float32)
    out_boxes, _, num_valid = traced_nms(boxes, scores, 10, 0.5, tile_size=2)
    assert int(num_valid[0]) == 3
    np.testing.assert_array_equal(out_boxes[0, :3], boxes[0, [0, 2, 3]])
    # Identical boxes: only the first is kept; IoU exactly at the threshold does not suppress.
    same = np.array([[[0, 0, 10, 10], [0, 0, 10, 10], [0, 5, 10, 15]]], np.float32)
    _, _, num_valid = traced_nms(same, np.array([[0.9, 0.9, 0.8]], np.float32), 10, 1 / 3)
    assert int(num_valid[0]) == 2


def test_padded_nms_valid_mask_xla_and_errors():
    rng = np.random.default_rng(0)
    boxes, scores = random_sorted_boxes(rng, 3, 200)
    valid = rng.uniform(size=(3, 200)) > 0.3
    eager = tf.function(lambda b, s, v: rpn_tf.padded_nms(b, s, 64, 0.6, valid=v, tile_size=32),
                        autograph=False)(boxes, scores, valid)
    compiled = tf.function(lambda b, s, v: rpn_tf.padded_nms(b, s, 64, 0.6, valid=v, tile_size=32),
                           jit_compile=True)(boxes, scores, valid)
    for got, want in zip(compiled, eager):
        np.testing.assert_array_equal(got, want)
    for image in range(3):
        expected = greedy_nms_np(boxes[image], np.where(valid[image], scores[image], 0), 64, 0.6)
        assert int(eager[2][image]) == len(expected)
    with pytest.raises(ValueError, match="static number of candidates"):
        tf.function(lambda b, s: rpn_tf.padded_nms(b, s, 5),
                    input_signature=[tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None])]
                    ).get_concrete_function()
