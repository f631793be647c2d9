import numpy as np
import pytest
import tensorflow as tf

import rpn_tf


def test_proposal_recall_on_hand_made_boxes():
    gt = tf.constant([[[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60], [-1, -1, -1, -1]]], tf.float32)
    proposals = tf.constant([[[0, 0, 10, 10],      # IoU 1 with GT 0
                              [20, 20, 40, 34],    # IoU 0.7 with GT 1
                              [50, 50, 60, 65],    # IoU 100/150 = 0.667 with GT 2 — but past num_proposals
                              [0, 0, 0, 0]]], tf.float32)
    metric = rpn_tf.ProposalRecall(top_n=300)
    metric.update_state(gt, proposals, tf.constant([2]))
    result = {key: float(value) for key, value in metric.result().items()}
    assert result["recall@300_iou0.5"] == pytest.approx(2 / 3)
    assert result["recall@300_iou0.7"] == pytest.approx(2 / 3)
    # AR over 0.5:0.95: GT 0 recalled at all 10 thresholds, GT 1 at 0.5..0.7 (5), GT 2 never.
    assert result["ar@300"] == pytest.approx((10 + 5) / 30)
    metric.update_state(gt, proposals, tf.constant([3]))
    assert float(metric.result()["recall@300_iou0.5"]) == pytest.approx(5 / 6)
    top1 = rpn_tf.ProposalRecall(top_n=1)
    top1.update_state(gt, proposals, tf.constant([3]))
    assert float(top1.result()["recall@1_iou0.5"]) == pytest.approx(1 / 3)
    metric.reset_state()
    assert float(metric.result()["recall@300_iou0.5"]) == 0.0


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


def _roi_inputs():
    gt = tf.constant([[[0, 0, 50, 50], [100, 100, 160, 140], [-1, -1, -1, -1]]], tf.float32)
    classes = tf.constant([[3, 7, -1]])
    proposals = tf.constant([[[0, 0, 50, 45],        # IoU 0.9 with GT 0 → class 3
                              [100, 100, 160, 110],  # IoU 0.25 with GT 1 → background
                              [200, 200, 260, 260],  # IoU 0 → background
                              [0, 0, 0, 0]]], tf.float32)
    return proposals, gt, classes


def test_roi_sampler_hand_made_case():
    proposals, gt, classes = _roi_inputs()
    out = rpn_tf.RoiSampler(num_samples=8, positive_fraction=0.5, seed=1)(proposals, gt, classes, tf.constant([3]))
    roi_classes = out["roi_classes"].numpy()[0]
    # positives: proposal 0 and both appended GT boxes; negatives: proposals 1 and 2; the rest padding
    np.testing.assert_array_equal(np.sort(roi_classes[:3]), [3, 3, 7])
    np.testing.assert_array_equal(roi_classes[3:5], [0, 0])
    np.testing.assert_array_equal(roi_classes[5:], [-1, -1, -1])
    assert np.all(out["rois"].numpy()[0, 5:] == 0)
    matched = out["matched_gt_index"].numpy()[0]
    assert set(matched[:3]) == {0, 1} and np.all(matched[3:] == -1)
    deltas = out["roi_deltas"].numpy()[0]
    assert np.all(deltas[3:] == 0) and np.all(np.isfinite(deltas))
    rois = out["rois"].numpy()[0]
    back = rpn_tf.decode_deltas(deltas[:3], rois[:3], (10.0, 10.0, 5.0, 5.0)).numpy()
    np.testing.assert_allclose(back, gt.numpy()[0][matched[:3]], atol=1e-3)


def test_roi_sampler_counts_with_many_candidates():
    rng = np.random.default_rng(0)
    gt = tf.constant([[[100, 100, 200, 200], [300, 300, 420, 380]]], tf.float32)
    jitter = rng.uniform(-10, 10, size=(1, 1000, 4)).astype(np.float32)
    base = np.concatenate([np.repeat(gt.numpy(), 100, axis=1), rng.uniform(0, 300, size=(1, 800, 2)).repeat(2, -1)
                           + [0, 0, 40, 40]], axis=1)
    proposals = tf.constant(base + jitter, tf.float32)
    sampler = rpn_tf.RoiSampler(seed=3)
    out = sampler(proposals, gt, tf.constant([[1, 2]]))
    roi_classes = out["roi_classes"].numpy()[0]
    assert (roi_classes > 0).sum() == 32  # 128 · 25 %
    assert (roi_classes == 0).sum() == 96
    again = sampler(proposals, gt, tf.constant([[1, 2]]))
    np.testing.assert_array_equal(again["rois"].numpy(), out["rois"].numpy())  # seeded: reproducible
    graph = tf.function(sampler)(proposals, gt, tf.constant([[1, 2]]))
    np.testing.assert_array_equal(graph["roi_classes"].numpy(), out["roi_classes"].numpy())


def test_roi_sampler_without_gt_and_bad_args():
    proposals, _, _ = _roi_inputs()
    out = rpn_tf.RoiSampler(num_samples=8, seed=0)(proposals, -tf.ones([1, 2, 4]), -tf.ones([1, 2], tf.int32))
    np.testing.assert_array_equal(out["roi_classes"].numpy()[0], [0, 0, 0, 0, -1, -1, -1, -1])
    with pytest.raises(ValueError, match="num_samples"):
        rpn_tf.RoiSampler(num_samples=0)
    with pytest.raises(ValueError, match="negative_iou_range"):
        rpn_tf.RoiSampler(negative_iou_range=(0.6, 0.5))


@pytest.mark.parametrize("seed", [0, 1])
def test_proposals_agree_with_numpy_reference(seed):
    from reference import proposals_np

    rng = np.random.default_rng(seed)
    image_size = (256, 320)
    anchors = rpn_tf.generate_anchors(image_size, rpn_tf.AnchorConfig(stride=16, scales=(2.0, 4.0, 8.0)))
    num_anchors = anchors.shape[0]
    logits = rng.normal(size=(2, num_anchors)).astype(np.float32)
    deltas = (rng.normal(size=(2, num_anchors, 4)) * 0.3).astype(np.float32)
    config = rpn_tf.ProposalConfig(pre_nms_top_k_test=1000, post_nms_top_k_test=100)
    out = rpn_tf.generate_proposals(anchors, logits, deltas, image_size, config)
    for image in range(2):
        expected_boxes, expected_scores = proposals_np(anchors.numpy(), logits[image], deltas[image], image_size,
                                                       1000, 100)
        count = int(out["num_proposals"][image])
        assert count == len(expected_boxes)
        np.testing.assert_allclose(out["boxes"].numpy()[image, :count], expected_boxes, atol=1e-3)
        np.testing.assert_allclose(out["scores"].numpy()[image, :count], expected_scores, atol=1e-5)
