import numpy as np
import pytest
import tensorflow as tf

import rpn_tf


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
