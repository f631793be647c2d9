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
