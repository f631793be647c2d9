"""COCO metrics by pycocotools, checked against known answers and against rpn-tf's own recall."""

import numpy as np
import pytest

pytest.importorskip("pycocotools")

from rpn_tf import coco_eval  # noqa: E402

TRUTH = [{"height": 100, "width": 120, "boxes": np.array([[10, 10, 40, 50], [60, 70, 90, 110]], np.float32),
          "classes": np.array([1, 2])},
         {"height": 80, "width": 80, "boxes": np.array([[5, 5, 25, 30]], np.float32), "classes": np.array([1])}]


def test_perfect_detections_score_ap_one_and_wrong_classes_zero():
    perfect = [(t["boxes"], np.ones(len(t["boxes"])), t["classes"]) for t in TRUTH]
    metrics = coco_eval.detection_metrics_of(TRUTH, perfect, num_classes=2)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["APl"] == -1.0  # no large box: pycocotools' "undefined"
    swapped = [(t["boxes"], np.ones(len(t["boxes"])), 3 - t["classes"]) for t in TRUTH]
    assert coco_eval.detection_metrics_of(TRUTH, swapped, num_classes=2)["AP"] == pytest.approx(0.0)


def test_shifted_boxes_pass_ap50_but_not_ap75():
    def shift(boxes):  # IoU 0.6 with the original for these sizes
        height = boxes[:, 2] - boxes[:, 0]
        return boxes + np.stack([height * 0.25, 0 * height, height * 0.25, 0 * height], 1)
    shifted = [(shift(t["boxes"]), np.ones(len(t["boxes"])), t["classes"]) for t in TRUTH]
    metrics = coco_eval.detection_metrics_of(TRUTH, shifted, num_classes=2)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(0.0)


def test_coco_recall_agrees_with_rpn_tf_recall_when_matches_are_one_to_one():
    rng = np.random.default_rng(0)
    proposals = []
    for truth in TRUTH:
        jitter = rng.uniform(-3, 3, truth["boxes"].shape).astype(np.float32)
        noise = rng.uniform(0, 60, (20, 2)).astype(np.float32)
        background = np.concatenate([noise, noise + 15], 1)
        boxes = np.concatenate([truth["boxes"] + jitter, background])
        proposals.append((boxes, np.linspace(1, 0.1, len(boxes))))
    report = coco_eval.proposal_metrics_of(TRUTH, proposals, top_ns=(10, 100))
    for n in (10, 100):
        for t in (0.5, 0.7):
            assert report[f"coco/recall@{n}_iou{t}"] == pytest.approx(report[f"recall@{n}_iou{t}"], abs=1e-6)
    assert report["coco/AR@100"] == pytest.approx(report["ar@100"], abs=0.02)  # IoU grids both 0.50:0.95


def test_one_proposal_covering_two_boxes_counts_twice_only_for_rpn_tf():
    truth = [{"height": 50, "width": 50, "boxes": np.array([[0, 0, 20, 20], [0, 2, 20, 22]], np.float32)}]
    report = coco_eval.proposal_metrics_of(truth, [(np.array([[0, 1, 20, 21]], np.float32), [0.9])], top_ns=(10,))
    assert report["recall@10_iou0.5"] == pytest.approx(1.0)
    assert report["coco/recall@10_iou0.5"] == pytest.approx(0.5)  # one-to-one matching (documented difference)


def test_no_detections_give_zeros_not_errors():
    metrics = coco_eval.detection_metrics_of(TRUTH, [(np.zeros((0, 4)), [], []) for _ in TRUTH], num_classes=2)
    assert metrics["AP"] == 0.0
