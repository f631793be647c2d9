"""COCO metrics through ``pycocotools`` (the field's reference implementation): detection AP / AP50 / AP75 / AP by
size of a ``FasterRCNN``, and AR@N of an RPN's proposals (``useCats=0``, as detectron2's proposal evaluation).

Evaluation is in each image's own pixels: the model predicts on the raw images (``predict_step``'s path, the
served path) and the ground truth is the dataset's boxes, untouched. ``pycocotools`` is an optional dependency:
``pip install pycocotools`` (or ``pip install rpn-tf[coco]``).

Recall definitions differ in one point (``docs/conventions.md``): COCO matches detections to GT boxes one-to-one
(greedily by score), rpn-tf's ``ProposalRecall`` counts a GT box as found when *any* proposal reaches the IoU — one
proposal may cover two adjacent GT boxes there. On the same proposals rpn-tf's recall is therefore ≥ COCO's, equal
when no proposal is the best match of two GT boxes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import numpy as np
import tensorflow as tf

from rpn_tf.modeling.metrics import ProposalRecall

# pycocotools' summary, in its order; as in pycocotools, -1 means "no GT box in that size range".
DETECTION_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("COCO metrics need pycocotools: pip install pycocotools (or pip install 'rpn-tf[coco]')") \
            from error
    return COCO, COCOeval


def _xywh(boxes_yxyx):
    boxes = np.asarray(boxes_yxyx, np.float64).reshape(-1, 4)
    return np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], axis=1)


def coco_ground_truth(images, num_classes=1):
    """An in-memory ``pycocotools.coco.COCO`` from ``images``: a list of dicts with ``height``, ``width``,
    ``boxes`` ``[n, 4]`` yxyx pixels and optional ``classes`` ``[n]`` (ids 1…K; default all 1). Image ids are the
    list positions."""
    COCO, _ = _pycocotools()
    annotations = []
    for image_id, image in enumerate(images):
        boxes = _xywh(image["boxes"])
        classes = np.ones(len(boxes), np.int64) if image.get("classes") is None else np.asarray(image["classes"])
        for box, category in zip(boxes, classes):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(category),
                                "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0})
    dataset = {"images": [{"id": i, "height": int(image["height"]), "width": int(image["width"])}
                          for i, image in enumerate(images)],
               "annotations": annotations,
               "categories": [{"id": k, "name": str(k)} for k in range(1, int(num_classes) + 1)]}
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _results(image_id, boxes, scores, classes=None):
    classes = np.ones(len(boxes), np.int64) if classes is None else np.asarray(classes).astype(np.int64)
    return [{"image_id": image_id, "category_id": int(c), "bbox": [float(v) for v in box], "score": float(s)}
            for box, s, c in zip(_xywh(boxes), scores, classes)]


def _evaluate(ground_truth, results, use_categories, max_detections):
    _, COCOeval = _pycocotools()
    with contextlib.redirect_stdout(io.StringIO()):
        detections = ground_truth.loadRes(results) if results else None
        if detections is None:
            return None
        evaluator = COCOeval(ground_truth, detections, iouType="bbox")
        evaluator.params.useCats = int(use_categories)
        evaluator.params.maxDets = list(max_detections)
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _mean_valid(values):
    values = np.asarray(values)
    values = values[values > -1]
    return float(values.mean()) if values.size else -1.0


def _elements(dataset):
    for element in dataset.as_numpy_iterator():
        boxes = np.asarray(element["boxes"], np.float32).reshape(-1, 4)
        classes = element.get("classes")
        yield element["image"], {"height": element["image"].shape[0], "width": element["image"].shape[1],
                                 "boxes": boxes, "classes": None if classes is None else np.asarray(classes)}


def proposal_metrics(model, dataset, top_ns=(100, 300, 1000)):
    """AR@N by ``pycocotools`` (``useCats=0``, IoU 0.50:0.95) of an ``RPNModel``'s proposals, and COCO's recall
    at IoU 0.5 / 0.7, beside rpn-tf's own ``ProposalRecall`` on the very same proposals.

    Args:
      dataset: an element dataset (``image`` uint8 ``[H, W, 3]`` of any size, ``boxes`` yxyx pixels), e.g. from
        ``rpn_tf.data.adapters``; one image per call.

    Returns:
      dict: ``coco/AR@N``, ``coco/AR@N_small|medium|large``, ``coco/recall@N_iou0.5|0.7`` and rpn-tf's
      ``recall@N_iou0.5|0.7`` / ``ar@N`` (``proposal_metrics_of``).
    """
    config = dataclasses.replace(model.proposal_config, post_nms_top_k_test=max(int(n) for n in top_ns))
    propose = tf.function(lambda image: _proposals(model, image, config), reduce_retracing=True)
    truths, proposals = [], []
    for image, truth in _elements(dataset):
        boxes, scores, count = (t.numpy() for t in propose(tf.constant(image)[None]))
        truths.append(truth)
        proposals.append((boxes[0, :count[0]], scores[0, :count[0]]))
    return proposal_metrics_of(truths, proposals, top_ns)


def proposal_metrics_of(truths, proposals, top_ns=(100, 300, 1000)):
    """``proposal_metrics`` of given proposals: ``truths`` as ``coco_ground_truth``'s ``images``, ``proposals`` a
    list (one per image) of ``(boxes [n, 4] yxyx, scores [n])`` in score order."""
    top_ns = tuple(sorted(int(n) for n in top_ns))
    results, ours = [], [ProposalRecall(n) for n in top_ns]
    for image_id, (truth, (boxes, scores)) in enumerate(zip(truths, proposals)):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        results.extend(_results(image_id, boxes, scores))
        gt = truth["boxes"][None] if len(truth["boxes"]) else -np.ones((1, 1, 4), np.float32)
        padded = boxes[None] if len(boxes) else np.zeros((1, 1, 4), np.float32)
        for metric in ours:
            metric.update_state(np.asarray(gt, np.float32), padded, np.array([len(boxes)], np.int32))
    # class-agnostic: every GT box is category 1 (one category listed for pycocotools)
    agnostic = [{**truth, "classes": None} for truth in truths]
    evaluator = _evaluate(coco_ground_truth(agnostic), results, False, top_ns)
    report = {}
    thresholds = list(np.round(evaluator.params.iouThrs, 2)) if evaluator else []
    for m, n in enumerate(top_ns):
        for a, area in enumerate(("", "_small", "_medium", "_large")):
            report[f"coco/AR@{n}{area}"] = _mean_valid(evaluator.eval["recall"][:, 0, a, m]) if evaluator else 0.0
        for t in (0.5, 0.7):
            report[f"coco/recall@{n}_iou{t}"] = \
                float(max(evaluator.eval["recall"][thresholds.index(t), 0, 0, m], 0.0)) if evaluator else 0.0
    for metric in ours:
        report.update({key: float(value) for key, value in metric.result().items()})
    return report


def _proposals(model, image, config):
    outputs = model.proposals_in_original_pixels(*model.to_canvas(image), proposal_config=config)
    return outputs["proposal_boxes"], outputs["proposal_scores"], outputs["num_proposals"]


def detection_metrics(model, dataset):
    """COCO detection metrics of a ``FasterRCNN`` (``DETECTION_METRICS``: AP at IoU 0.50:0.95, AP50, AP75, AP by
    size, AR at 1 / 10 / 100 detections) by ``pycocotools``, in each image's own pixels.

    Args:
      dataset: an element dataset (``image``, ``boxes`` yxyx pixels, ``classes`` ids 1…K); one image per call.
    """
    predict = tf.function(lambda image: model.predict_step(image), reduce_retracing=True)
    truths, detections = [], []
    for image, truth in _elements(dataset):
        out = {key: value.numpy()[0] for key, value in predict(tf.constant(image)[None]).items()}
        count = int(out["num_detections"])
        truths.append(truth)
        detections.append((out["detection_boxes"][:count], out["detection_scores"][:count],
                           out["detection_classes"][:count]))
    return detection_metrics_of(truths, detections, model.num_classes)


def detection_metrics_of(truths, detections, num_classes):
    """``detection_metrics`` of given detections: a list (one per image) of ``(boxes [n, 4] yxyx, scores [n],
    classes [n])``."""
    results = []
    for image_id, (boxes, scores, classes) in enumerate(detections):
        results.extend(_results(image_id, np.asarray(boxes).reshape(-1, 4), scores, classes))
    evaluator = _evaluate(coco_ground_truth(truths, num_classes), results, True, (1, 10, 100))
    if evaluator is None:
        return {name: 0.0 for name in DETECTION_METRICS}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    return {name: float(value) for name, value in zip(DETECTION_METRICS, evaluator.stats)}
