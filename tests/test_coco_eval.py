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


def crowd_coco(root):
    """A small COCO instances file with crowd regions and segmentation areas (not box areas), its images on disk."""
    import json

    from PIL import Image

    rng = np.random.default_rng(3)
    images, annotations = [], []
    for image_id, (height, width) in zip((7, 11, 19), ((96, 128), (120, 90), (100, 100))):
        name = f"photo{image_id}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3)).astype(np.uint8)).save(root / name)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for k in range(4):
            y, x = rng.integers(0, height - 40), rng.integers(0, width - 40)
            h, w = rng.integers(20, 40, 2)
            crowd = k == 3
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": (5, 9)[k % 2],
                "bbox": [float(x), float(y), float(w), float(h)], "iscrowd": int(crowd),
                # a polygon whose area is 45 % of its box's: APs / APm / APl follow it, not the box
                "area": float(0.45 * w * h) if not crowd else float(w * h),
                "segmentation": [[float(x), float(y), float(x + w), float(y), float(x), float(y + h)]]})
    dataset = {"images": images, "annotations": annotations,
               "categories": [{"id": 5, "name": "five"}, {"id": 9, "name": "nine"}]}
    path = root / "instances.json"
    path.write_text(json.dumps(dataset))
    return str(path), dataset


def cocoeval_stats(annotation_file, results_file):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(annotation_file)
        evaluator = COCOeval(truth, truth.loadRes(results_file), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(coco_eval.DETECTION_METRICS, evaluator.stats))


def test_ap_against_a_coco_json_with_crowd_regions_is_cocoevals(tmp_path):
    from rpn_tf.data import adapters

    path, coco = crowd_coco(tmp_path)
    dataset, report = adapters.from_coco(path, str(tmp_path), category_ids="contiguous")
    assert report.excluded_boxes["iscrowd"] == 3
    truths, detections = [], []
    rng = np.random.default_rng(4)
    for element in dataset.as_numpy_iterator():
        image_id = int(element["image_id"])
        truths.append({"height": element["image"].shape[0], "width": element["image"].shape[1],
                       "boxes": element["boxes"], "classes": element["classes"], "image_id": image_id})
        # detections: the instances, jittered, plus a confident one on each crowd region (COCO ignores it)
        crowd = [a for a in coco["annotations"] if a["image_id"] == image_id and a["iscrowd"]]
        crowd_boxes = np.array([[a["bbox"][1], a["bbox"][0], a["bbox"][1] + a["bbox"][3],
                                 a["bbox"][0] + a["bbox"][2]] for a in crowd], np.float32)
        boxes = np.concatenate([element["boxes"] + rng.uniform(-3, 3, element["boxes"].shape), crowd_boxes])
        scores = np.concatenate([rng.uniform(0.3, 0.9, len(element["boxes"])), [0.95] * len(crowd)])
        classes = np.concatenate([element["classes"], [1 + (a["category_id"] == 9) for a in crowd]])
        detections.append((boxes, scores, classes))
    results_file = str(tmp_path / "detections.json")
    ours = coco_eval.detection_metrics_of(truths, detections, 2, ground_truth=path, categories=report.categories,
                                          results_json=results_file)
    theirs = cocoeval_stats(path, results_file)
    for name in coco_eval.DETECTION_METRICS:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-12), name
    # the dataset's boxes alone (box areas, no crowd regions) give other figures: crowd hits count as false
    # positives and the size buckets move
    box_area = coco_eval.detection_metrics_of(truths, detections, 2)
    assert box_area["AP"] < ours["AP"] and box_area["APs"] != ours["APs"]


def test_rpn_tf_evaluate_on_a_coco_json_prints_cocoevals_ap_and_writes_the_results(tmp_path):
    import json
    import os
    import subprocess
    import sys

    import keras
    import rpn_tf

    path, _ = crowd_coco(tmp_path)
    keras.utils.set_random_seed(0)
    rpn = rpn_tf.RPNModel((64, 64), backbone="simple_fpn",
                          anchor_config=rpn_tf.MultiLevelAnchorConfig.fpn(smallest_size=16.0))
    model = rpn_tf.FasterRCNN(2, rpn=rpn, representation_size=16, detection_config={"score_threshold": 0.0})
    model.save(str(tmp_path / "detector.keras"))
    results_file, report_file = str(tmp_path / "out" / "detections.json"), str(tmp_path / "report.json")
    command = [sys.executable, "-m", "rpn_tf.tools.cli", "evaluate", str(tmp_path / "detector.keras"), "--format",
               "coco", "--data", path, "--images", str(tmp_path), "--category-ids", "contiguous",
               "--detections-json", results_file, "--json", report_file]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "crowd regions ignored" in out.stdout
    written = json.load(open(results_file))
    assert written and {r["image_id"] for r in written} <= {7, 11, 19} and {r["category_id"] for r in written} <= {5, 9}
    printed = json.load(open(report_file))["detection"]
    theirs = cocoeval_stats(path, results_file)
    for name in coco_eval.DETECTION_METRICS:
        assert printed[name] == pytest.approx(theirs[name], abs=1e-12), name
