import math

import numpy as np
import pytest
import tensorflow as tf

import rpn_tf


def test_encode_decode_round_trip_with_any_weights():
    anchors = np.array([[0, 0, 32, 16], [10, 20, 74, 52]], np.float32)
    boxes = np.array([[2, 3, 30, 21], [0, 0, 100, 90]], np.float32)
    for weights in [(1, 1, 1, 1), (10, 10, 5, 5), (2, 0.5, 1, 3)]:
        coder = rpn_tf.BoxCoder(weights)
        deltas = coder.encode(boxes, anchors)
        np.testing.assert_allclose(coder.decode(deltas, anchors), boxes, atol=1e-4)
    # Weights scale the deltas.
    np.testing.assert_allclose(rpn_tf.BoxCoder((10, 10, 5, 5)).encode(boxes, anchors),
                               rpn_tf.BoxCoder().encode(boxes, anchors) * [10, 10, 5, 5], rtol=1e-5)


def test_fast_path_equals_encode():
    rng = np.random.default_rng(0)
    anchors = rpn_tf.generate_anchors((128, 128), rpn_tf.AnchorConfig(stride=16, scales=(1, 2))).numpy()
    boxes = anchors + rng.uniform(-3, 3, anchors.shape).astype(np.float32)
    coder = rpn_tf.BoxCoder((3, 2, 1, 0.5))
    fast = coder.encode_with_constants(coder.box_terms(tf.constant(boxes)), coder.anchor_constants(anchors))
    np.testing.assert_allclose(fast, coder.encode(boxes, anchors), atol=1e-5)


def test_decode_clamps_log_scale():
    coder = rpn_tf.BoxCoder()
    assert coder.scale_clip == pytest.approx(math.log(1000 / 16))
    box = coder.decode(tf.constant([[0.0, 0.0, 100.0, 100.0]]), tf.constant([[0.0, 0.0, 16.0, 16.0]])).numpy()
    np.testing.assert_allclose(box[0, 2] - box[0, 0], 1000.0, rtol=1e-4)


@pytest.mark.parametrize("weights", [(1, 1, 1), (1, 1, 0, 1), (1, 1, float("nan"), 1), "abcd"])
def test_bad_weights(weights):
    with pytest.raises(ValueError, match="BoxCoder.weights"):
        rpn_tf.BoxCoder(weights)


def test_model_decodes_with_the_targets_coder():
    """A non-default delta weight is used for both the targets and the proposals (one BoxCoder)."""
    weights = (2.0, 2.0, 1.0, 1.0)
    model = rpn_tf.RPNModel((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)), backbone="simple",
                            head_channels=8, target_encoder_config={"delta_weights": weights, "seed": 0},
                            proposal_config=rpn_tf.ProposalConfig(min_size=0, post_nms_top_k_test=500, nms_iou=1.0))
    assert model.target_encoder.box_coder == rpn_tf.BoxCoder(weights)
    gt = np.array([[[10, 12, 40, 44]]], np.float32)
    targets = model.target_encoder.encode(gt)
    # Feed the targets as predictions: the positive anchors decode exactly onto the GT box.
    logits = tf.where(targets["rpn_labels"] == 1, 10.0, -10.0)
    proposals = model.propose({"objectness_logits": logits, "box_deltas": targets["rpn_deltas"]})
    count = int(tf.reduce_sum(tf.cast(targets["rpn_labels"] == 1, tf.int32)))
    assert count > 0
    np.testing.assert_allclose(proposals["boxes"][0, :count], np.repeat(gt[0], count, axis=0), atol=1e-3)
    restored = rpn_tf.RPNModel.from_config(model.get_config())
    assert restored.target_encoder.box_coder == rpn_tf.BoxCoder(weights)
