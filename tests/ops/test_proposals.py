import numpy as np
import pytest
import tensorflow as tf

import rpn_tf


def test_generate_proposals_shapes_and_filters():
    anchors = rpn_tf.generate_anchors((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)))
    num_anchors = anchors.shape[0]
    logits = tf.random.stateless_normal([2, num_anchors], seed=[1, 2])
    deltas = tf.zeros([2, num_anchors, 4])
    config = rpn_tf.ProposalConfig(post_nms_top_k_test=20, min_size=16)
    out = rpn_tf.generate_proposals(anchors, logits, deltas, (64, 64), config)
    assert out["boxes"].shape == (2, 20, 4) and out["scores"].shape == (2, 20)
    boxes = out["boxes"].numpy()
    for image in range(2):
        count = int(out["num_proposals"][image])
        assert 0 < count <= 20
        valid = boxes[image, :count]
        assert np.all(valid >= 0) and np.all(valid <= 64)
        assert np.all(valid[:, 2] - valid[:, 0] >= 16) and np.all(valid[:, 3] - valid[:, 1] >= 16)
        scores = out["scores"].numpy()[image, :count]
        assert np.all(np.diff(scores) <= 0)
        assert np.all(rpn_tf.iou_matrix(valid, valid).numpy()[np.triu_indices(count, 1)] <= 0.7 + 1e-6)


def test_bad_proposal_config():
    with pytest.raises(ValueError, match="nms_iou"):
        rpn_tf.ProposalConfig(nms_iou=0)
    with pytest.raises(ValueError, match="post_nms_top_k_test"):
        rpn_tf.ProposalConfig(post_nms_top_k_test=0)
    with pytest.raises(ValueError, match="nms must be one of"):
        rpn_tf.ProposalConfig(nms="soft")


@pytest.mark.parametrize("nms,jit_compile", [("combined", False), ("padded", False), ("padded", True)])
@pytest.mark.parametrize("seed", [0, 1])
def test_proposals_agree_with_numpy_reference(seed, nms, jit_compile):
    from reference import proposals_np

    rng = np.random.default_rng(seed)
    image_size = (256, 320)
    anchors = rpn_tf.generate_anchors(image_size, rpn_tf.AnchorConfig(stride=16, scales=(2.0, 4.0, 8.0)))
    num_anchors = anchors.shape[0]
    logits = rng.normal(size=(2, num_anchors)).astype(np.float32)
    deltas = (rng.normal(size=(2, num_anchors, 4)) * 0.3).astype(np.float32)
    config = rpn_tf.ProposalConfig(pre_nms_top_k_test=1000, post_nms_top_k_test=100, nms=nms)
    propose = tf.function(lambda logits, deltas: rpn_tf.generate_proposals(anchors, logits, deltas, image_size, config),
                          jit_compile=jit_compile, autograph=False)
    out = propose(logits, deltas)
    for image in range(2):
        expected_boxes, expected_scores = proposals_np(anchors.numpy(), logits[image], deltas[image], image_size,
                                                       1000, 100)
        count = int(out["num_proposals"][image])
        assert count == len(expected_boxes)
        np.testing.assert_allclose(out["boxes"].numpy()[image, :count], expected_boxes, atol=1e-3)
        np.testing.assert_allclose(out["scores"].numpy()[image, :count], expected_scores, atol=1e-5)


def per_level_proposals_np(anchors, logits, deltas, image_size, level_sizes, pre_nms, post_nms, nms_iou=0.7,
                           min_size=16.0):
    """torchvision / detectron2 rule: per level top-k, NMS within each level, the best post_nms of all levels."""
    from reference import decode_np, greedy_nms_np

    boxes = decode_np(deltas.astype(np.float64), anchors.astype(np.float64))
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, image_size[0])
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, image_size[1])
    big = (boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size)
    kept, start = [], 0
    for size in level_sizes:
        index = np.arange(start, start + size)
        index = index[big[index]]
        order = index[np.argsort(-logits[index], kind="stable")][:pre_nms]
        kept += greedy_nms_np(boxes, order, post_nms, nms_iou)
        start += size
    kept = sorted(kept, key=lambda i: -logits[i])[:post_nms]
    return boxes[kept], 1 / (1 + np.exp(-logits[kept]))


@pytest.mark.parametrize("nms,jit_compile", [("combined", False), ("padded", False), ("padded", True)])
def test_per_level_selection_agrees_with_numpy_reference(nms, jit_compile):
    rng = np.random.default_rng(3)
    image_size = (128, 160)
    config = rpn_tf.MultiLevelAnchorConfig.fpn(strides=(8, 16, 32), smallest_size=24)
    anchors = rpn_tf.generate_anchors(image_size, config)
    level_sizes = rpn_tf.anchors_per_level(image_size, config)
    assert sum(level_sizes) == anchors.shape[0] and len(level_sizes) == 3
    logits = rng.normal(size=(2, anchors.shape[0])).astype(np.float32)
    deltas = (rng.normal(size=(2, anchors.shape[0], 4)) * 0.3).astype(np.float32)
    proposal_config = rpn_tf.ProposalConfig(pre_nms_top_k_test=100, post_nms_top_k_test=60, nms=nms, min_size=4)
    propose = tf.function(lambda scores, boxes: rpn_tf.generate_proposals(
                              anchors, scores, boxes, image_size, proposal_config, level_sizes=level_sizes),
                          jit_compile=jit_compile, autograph=False)
    out = propose(logits, deltas)
    for image in range(2):
        expected_boxes, expected_scores = per_level_proposals_np(anchors.numpy(), logits[image], deltas[image],
                                                                 image_size, level_sizes, 100, 60, min_size=4)
        count = int(out["num_proposals"][image])
        assert count == len(expected_boxes)
        np.testing.assert_allclose(out["scores"].numpy()[image, :count], expected_scores, atol=1e-5)
        np.testing.assert_allclose(out["boxes"].numpy()[image, :count], expected_boxes, atol=1e-3)


def test_proposals_clipped_to_each_valid_size():
    anchors = rpn_tf.generate_anchors((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)))
    logits = tf.zeros([2, anchors.shape[0]])
    deltas = tf.zeros([2, anchors.shape[0], 4])
    config = rpn_tf.ProposalConfig(min_size=1, nms_iou=1.0, post_nms_top_k_test=200)
    out = rpn_tf.generate_proposals(anchors, logits, deltas, (64, 64), config, valid_sizes=[[64, 64], [40, 20]])
    boxes = out["boxes"].numpy()[1, :int(out["num_proposals"][1])]
    assert len(boxes) > 0 and boxes[:, 2].max() <= 40 and boxes[:, 3].max() <= 20
    with pytest.raises(ValueError, match="level_sizes"):
        rpn_tf.generate_proposals(anchors, logits, deltas, (64, 64), config, level_sizes=(3, 4))
