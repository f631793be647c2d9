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
