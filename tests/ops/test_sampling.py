import numpy as np
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import rpn_tf
from helpers import IMAGE_SIZE, random_boxes
from reference import iou_np


def test_sampling_counts_and_subset(encoder):
    rng = np.random.default_rng(0)
    # Many large boxes → more than 128 positives before sampling.
    gt = random_boxes(rng, 40, min_size=150, max_size=500)
    labels, _ = encoder.label_anchors(gt)
    assert (labels.numpy() == 1).sum() > 128
    sampled = encoder.encode(gt)["rpn_labels"].numpy()
    assert (sampled == 1).sum() == 128
    assert (sampled == 0).sum() == 128
    assert np.all(labels.numpy()[sampled == 1] == 1) and np.all(labels.numpy()[sampled == 0] == 0)
    # Few positives → negatives fill up to exactly 256.
    gt = random_boxes(rng, 2, min_size=100, max_size=150)
    labels, _ = encoder.label_anchors(gt)
    num_positive = (labels.numpy() == 1).sum()
    assert 0 < num_positive < 128
    sampled = encoder.encode(gt)["rpn_labels"].numpy()
    assert (sampled == 1).sum() == num_positive
    assert (sampled >= 0).sum() == 256


def test_sample_balanced_with_few_candidates():
    labels = tf.constant([[1, 1, 1, 0, -1, 0], [-1, -1, -1, -1, -1, -1]])
    seeds = tf.constant([[1, 2], [3, 4]], tf.int64)
    sampled = rpn_tf.sample_balanced(labels, seeds, num_samples=4, positive_fraction=0.5).numpy()
    assert (sampled[0] == 1).sum() == 2 and (sampled[0] == 0).sum() == 2
    np.testing.assert_array_equal(sampled[1], -1)


_PROPERTY_ENCODER = rpn_tf.RpnTargetEncoder(IMAGE_SIZE, seed=1)



@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 700), st.floats(0, 700), st.floats(8, 400), st.floats(8, 400)),
                min_size=0, max_size=12))
def test_label_and_sample_invariants(raw_boxes):
    encoder = _PROPERTY_ENCODER
    gt = np.array([[y, x, min(y + h, 800), min(x + w, 800)] for y, x, h, w in raw_boxes], np.float32).reshape(-1, 4)
    labels, matched = (t.numpy() for t in encoder.label_anchors(gt))
    sampled = encoder.encode(gt)["rpn_labels"].numpy()
    # every GT box keeps its best anchor(s) as positives
    anchors = encoder.anchors.numpy()
    ious = iou_np(anchors, gt) if len(gt) else np.zeros((len(anchors), 0), np.float32)
    outside = ((anchors[:, :2] < 0) | (anchors[:, 2:] > 800)).any(axis=1)
    ious[outside] = -1
    for column in range(len(gt)):
        best = ious[:, column].max()
        if best > 0:
            assert np.any(labels[ious[:, column] >= best - 1e-6] == 1)
    # sampling: a subset of the labels, at most 128 positives, at most 256 in all, exactly 256 when possible
    assert np.all(np.isin(sampled[sampled >= 0], [0, 1])) and np.all(labels[sampled == 1] == 1)
    assert np.all(labels[sampled == 0] == 0)
    assert (sampled == 1).sum() == min((labels == 1).sum(), 128)
    assert (sampled >= 0).sum() == min(256, (sampled == 1).sum() + (labels == 0).sum())
    assert np.all(matched[outside] == -1) and np.all(labels[outside] == -1)
