import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
from rpn_tf.evaluation import format_waterfall, plot_waterfall, recall_waterfall

# 64×64 image, stride 16, one 16×16 anchor per cell: 16 anchors, anchor i at row i // 4, column i % 4.
BOX_A = [0.0, 0.0, 16.0, 16.0]     # exactly anchor 0
BOX_B = [20.0, 20.0, 60.0, 60.0]   # 40×40: no anchor reaches IoU 0.5 (best 256 / 1600 = 0.16)


class HandMadeModel:
    """Fixed outputs: anchor 5 regresses exactly onto BOX_B and scores highest; anchor 0 (= BOX_A) scores lowest."""

    def __init__(self):
        self.target_encoder = rpn_tf.RpnTargetEncoder((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(1,),
                                                                                    ratios=(1,)),
                                                      resize="stretch", max_boxes=4)
        self.anchors = self.target_encoder.anchors
        self.proposal_config = rpn_tf.ProposalConfig()
        logits = np.linspace(2.0, 1.0, 16).astype(np.float32)  # anchor 0 highest for now
        logits[5], logits[0] = 5.0, -5.0
        deltas = np.zeros((16, 4), np.float32)
        deltas[5] = rpn_tf.BoxCoder().encode(np.array([BOX_B], np.float32), self.anchors.numpy()[5:6]).numpy()[0]
        self.logits, self.deltas = tf.constant(logits), tf.constant(deltas)

    def __call__(self, images, training=False):
        batch = tf.shape(images)[0]
        return {"objectness_logits": tf.tile(self.logits[None], [batch, 1]),
                "box_deltas": tf.tile(self.deltas[None], [batch, 1, 1])}

    def propose(self, outputs, training=False, proposal_config=None, valid_sizes=None):
        return rpn_tf.generate_proposals(self.anchors, outputs["objectness_logits"], outputs["box_deltas"],
                                         (64, 64), proposal_config or self.proposal_config, valid_sizes=valid_sizes)


def test_waterfall_recall_of_each_stage_on_a_hand_made_case(tmp_path):
    element = {"image": np.zeros((64, 64, 3), np.uint8), "boxes": np.array([BOX_A, BOX_B], np.float32),
               "classes": np.array([1, 1], np.int32)}
    dataset = tf.data.Dataset.from_tensors(element)
    waterfall = recall_waterfall(HandMadeModel(), dataset, top_ns=(1, 16))
    stages = waterfall["stages"]
    assert list(stages) == ["all anchors", "all decoded boxes", "top 1 by score (no NMS)", "top 1 after NMS",
                            "top 16 by score (no NMS)", "top 16 after NMS"]
    assert stages["all anchors"]["iou0.5"] == 0.5           # BOX_A only
    assert stages["all decoded boxes"]["iou0.5"] == 1.0     # anchor 5 decodes onto BOX_B
    assert stages["top 1 by score (no NMS)"]["iou0.5"] == 0.5 and stages["top 1 after NMS"]["iou0.7"] == 0.5
    assert stages["top 16 by score (no NMS)"]["iou0.5"] == 1.0 and stages["top 16 after NMS"]["iou0.5"] == 1.0
    # By size: BOX_A is small (256 px²), BOX_B medium (1600 px²).
    assert waterfall["num_gt_by_size"] == {"small": 1, "medium": 1, "large": 0}
    assert stages["all anchors"]["by_size"]["small"]["iou0.5"] == 1.0
    assert stages["all anchors"]["by_size"]["medium"]["iou0.5"] == 0.0
    assert stages["all anchors"]["by_size"]["large"]["iou0.5"] is None
    # Scores by label: anchor 0 is the only positive (forced for BOX_A; BOX_B's best anchors too: IoU 0.16 > 0).
    scores = waterfall["scores"]
    assert scores["positive"]["count"] + scores["negative"]["count"] + scores["ignored"]["count"] == 16
    assert sum(waterfall["top300_labels"].values()) == 16
    text = format_waterfall(waterfall)
    assert "all decoded boxes" in text and "0.500" in text and "labels of the 300 best-scored" in text
    path = plot_waterfall(waterfall, str(tmp_path / "waterfall.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_waterfall_of_a_real_model_is_monotone_in_n():
    model = rpn_tf.RPNModel((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)), backbone="simple",
                            head_channels=8)
    element = {"image": np.random.default_rng(0).integers(0, 255, (80, 64, 3)).astype(np.uint8),
               "boxes": np.array([[4, 4, 30, 40], [40, 10, 70, 50]], np.float32), "classes": np.array([1, 1])}
    waterfall = recall_waterfall(model, tf.data.Dataset.from_tensors(element), top_ns=(10, 50))
    stages = waterfall["stages"]
    for kind in ("by score (no NMS)", "after NMS"):
        assert stages[f"top 10 {kind}"]["iou0.5"] <= stages[f"top 50 {kind}"]["iou0.5"]
    assert stages["top 50 by score (no NMS)"]["iou0.5"] <= stages["all decoded boxes"]["iou0.5"]


@pytest.mark.parametrize("top_ns", [(100,), (300, 1000)])
def test_evaluate_recall_keys(top_ns):
    model = rpn_tf.RPNModel((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)), backbone="simple",
                            head_channels=8)
    element = {"image": np.zeros((64, 64, 3), np.uint8), "boxes": np.array([[4, 4, 30, 40]], np.float32),
               "classes": np.array([1])}
    results = rpn_tf.evaluate_recall(model, tf.data.Dataset.from_tensors(element), top_ns)
    assert set(results) == {f"{kind}@{n}{suffix}" for n in top_ns
                            for kind, suffix in (("ar", ""), ("recall", "_iou0.5"), ("recall", "_iou0.7"))}
