"""COCO metrics through ``pycocotools`` (the field's reference implementation): detection AP / AP50 / AP75 / AP by
size of a ``FasterRCNN``, and AR@N of an RPN's proposals (``useCats=0``, as detectron2's proposal evaluation).

Evaluation is in each image's own pixels: the model predicts on the raw images (``predict_step``'s path, the
served path). The ground truth is either

* the COCO instances JSON the data came from (``ground_truth=path``, ``rpn-tf evaluate --format coco``): COCO's own
  evaluation — crowd regions (``iscrowd``) ignored as ``COCOeval`` does, APs / APm / APl by COCO's ``area`` (the
  segmentation's), the file's image and category ids — so the figures are COCO's, and ``write_results_json``
  writes the detections as a COCO results file for anyone to rerun ``COCOeval``; or
* the dataset's boxes (any other format): every box a non-crowd instance, sizes by box area
  (``BOX_AREA_NOTE``, printed beside every such figure).

Recall definitions differ in one point (``docs/conventions.md``): COCO matches detections to GT boxes one-to-one
(greedily by score), rpn-tf's ``ProposalRecall`` counts a GT box as found when *any* proposal reaches the IoU — one
proposal may cover two adjacent GT boxes there. On the same proposals rpn-tf's recall is therefore ≥ COCO's, equal
when no proposal is the best match of two GT boxes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile

import numpy as np
import tensorflow as tf

from rpn_tf.modeling.metrics import ProposalRecall

# pycocotools' summary, in its order; as in pycocotools, -1 means "no GT box in that size range".
DETECTION_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BOX_AREA_NOTE = "ground truth from the dataset's boxes: box-area buckets, no crowd regions"


def ground_truth_note(ground_truth):
    """How a figure was computed, to print beside it: the COCO JSON's official evaluation or ``BOX_AREA_NOTE``."""
    if ground_truth is None:
        return BOX_AREA_NOTE
    name = ground_truth if isinstance(ground_truth, str) else "the COCO ground truth"
    return f"COCO's evaluation of {name}: crowd regions ignored, COCO's areas"


def load_coco_ground_truth(ground_truth):
    """A ``pycocotools.coco.COCO`` from a COCO instances JSON path (or the object itself)."""
    COCO, _ = _pycocotools()
    if not isinstance(ground_truth, str):
        return ground_truth
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(ground_truth)


def write_results_json(path, results):
    """Writes COCO results (``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``) to ``path``
    atomically (a complete file or none: another program never reads half of it)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".detections-", suffix=".json", dir=directory)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(results, file)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


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


def _results(image_id, boxes, scores, classes=None, category_of=None):
    """COCO results of one image; ``category_of`` maps the model's class ids to the ground truth's category ids."""
    classes = np.ones(len(boxes), np.int64) if classes is None else np.asarray(classes).astype(np.int64)
    if category_of is not None:
        classes = [category_of(int(c)) for c in classes]
    return [{"image_id": image_id, "category_id": int(c), "bbox": [float(v) for v in box], "score": float(s)}
            for box, s, c in zip(_xywh(boxes), scores, classes)]


def _evaluate(ground_truth, results, use_categories, max_detections, image_ids=None):
    """A ``COCOeval`` run (evaluate + accumulate) over ``image_ids`` (default: every image of the ground truth), or
    ``None`` without any result."""
    _, COCOeval = _pycocotools()
    with contextlib.redirect_stdout(io.StringIO()):
        detections = ground_truth.loadRes(results) if results else None
        if detections is None:
            return None
        evaluator = COCOeval(ground_truth, detections, iouType="bbox")
        evaluator.params.useCats = int(use_categories)
        evaluator.params.maxDets = list(max_detections)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def _mean_valid(values):
    values = np.asarray(values)
    values = values[values > -1]
    return float(values.mean()) if values.size else -1.0


def _elements(dataset, need_image_ids=False):
    for element in dataset.as_numpy_iterator():
        boxes = np.asarray(element["boxes"], np.float32).reshape(-1, 4)
        classes = element.get("classes")
        if need_image_ids and "image_id" not in element:
            raise ValueError("evaluating against a COCO JSON needs elements with the file's 'image_id' (from_coco "
                             "gives them; tiling does not keep them)")
        yield element["image"], {"height": element["image"].shape[0], "width": element["image"].shape[1],
                                 "boxes": boxes, "classes": None if classes is None else np.asarray(classes),
                                 "image_id": int(element["image_id"]) if "image_id" in element else None}


def proposal_metrics(model, dataset, top_ns=(100, 300, 1000), ground_truth=None):
    """AR@N by ``pycocotools`` (``useCats=0``, IoU 0.50:0.95) of an ``RPNModel``'s proposals, and COCO's recall
    at IoU 0.5 / 0.7, beside rpn-tf's own ``ProposalRecall`` on the very same proposals.

    Args:
      dataset: an element dataset (``image`` uint8 ``[H, W, 3]`` of any size, ``boxes`` yxyx pixels), e.g. from
        ``rpn_tf.data.adapters``; one image per call.
      ground_truth: ``None`` (the dataset's boxes: ``BOX_AREA_NOTE``) or the COCO instances JSON the data came from
        (a path or a ``COCO``; elements with its ``image_id``, as ``from_coco`` gives): COCO's evaluation.

    Returns:
      dict: ``coco/AR@N``, ``coco/AR@N_small|medium|large``, ``coco/recall@N_iou0.5|0.7`` and rpn-tf's
      ``recall@N_iou0.5|0.7`` / ``ar@N`` (``proposal_metrics_of``).
    """
    config = dataclasses.replace(model.proposal_config, post_nms_top_k_test=max(int(n) for n in top_ns))
    propose = tf.function(lambda image: _proposals(model, image, config), reduce_retracing=True)
    truths, proposals = [], []
    for image, truth in _elements(dataset, need_image_ids=ground_truth is not None):
        boxes, scores, count = (t.numpy() for t in propose(tf.constant(image)[None]))
        truths.append(truth)
        proposals.append((boxes[0, :count[0]], scores[0, :count[0]]))
    return proposal_metrics_of(truths, proposals, top_ns, ground_truth)


def proposal_metrics_of(truths, proposals, top_ns=(100, 300, 1000), ground_truth=None):
    """``proposal_metrics`` of given proposals: ``truths`` as ``coco_ground_truth``'s ``images`` (with ``image_id``
    when ``ground_truth`` is given), ``proposals`` a list (one per image) of ``(boxes [n, 4] yxyx, scores [n])`` in
    score order."""
    top_ns = tuple(sorted(int(n) for n in top_ns))
    results, ours = [], [ProposalRecall(n) for n in top_ns]
    image_ids = _image_ids(truths, ground_truth)
    for image_id, truth, (boxes, scores) in zip(image_ids, truths, proposals):
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        results.extend(_results(image_id, boxes, scores))
        gt = truth["boxes"][None] if len(truth["boxes"]) else -np.ones((1, 1, 4), np.float32)
        padded = boxes[None] if len(boxes) else np.zeros((1, 1, 4), np.float32)
        for metric in ours:
            metric.update_state(np.asarray(gt, np.float32), padded, np.array([len(boxes)], np.int32))
    if ground_truth is None:  # class-agnostic: every GT box is category 1 (one category listed for pycocotools)
        coco = coco_ground_truth([{**truth, "classes": None} for truth in truths])
    else:  # useCats=0: the file's categories do not matter, its crowd regions and areas do
        coco = load_coco_ground_truth(ground_truth)
    evaluator = _evaluate(coco, results, False, top_ns, image_ids)
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


def _image_ids(truths, ground_truth):
    """The COCO image id of each image: the file's (``truth["image_id"]``) against a COCO JSON, else positions."""
    if ground_truth is None:
        return list(range(len(truths)))
    return [int(truth["image_id"]) for truth in truths]


def _proposals(model, image, config):
    outputs = model.proposals_in_original_pixels(*model.to_canvas(image), proposal_config=config)
    return outputs["proposal_boxes"], outputs["proposal_scores"], outputs["num_proposals"]


def detection_metrics(model, dataset, ground_truth=None, categories=None, results_json=None):
    """COCO detection metrics of a ``FasterRCNN`` (``DETECTION_METRICS``: AP at IoU 0.50:0.95, AP50, AP75, AP by
    size, AR at 1 / 10 / 100 detections) by ``pycocotools``, in each image's own pixels.

    Args:
      dataset: an element dataset (``image``, ``boxes`` yxyx pixels, ``classes`` ids 1…K); one image per call.
      ground_truth: ``None`` (the dataset's boxes: ``BOX_AREA_NOTE``) or the COCO instances JSON the data came from
        (a path or a ``COCO``; elements with its ``image_id``, as ``from_coco`` gives): COCO's own evaluation,
        crowd regions ignored, COCO's areas.
      categories: the model's class id → the ground truth's category: ``from_coco``'s ``report.categories``
        (``{class: {"id": category_id, ...}}``, for ``category_ids="contiguous"``) or a ``{class: category_id}``
        dict; default the class id itself (``category_ids="raw"``).
      results_json: optional path: the detections written there as a COCO results file (``write_results_json``).
    """
    predict = tf.function(lambda image: model.predict_step(image), reduce_retracing=True)
    truths, detections = [], []
    for image, truth in _elements(dataset, need_image_ids=ground_truth is not None):
        out = {key: value.numpy()[0] for key, value in predict(tf.constant(image)[None]).items()}
        count = int(out["num_detections"])
        truths.append(truth)
        detections.append((out["detection_boxes"][:count], out["detection_scores"][:count],
                           out["detection_classes"][:count]))
    return detection_metrics_of(truths, detections, model.num_classes, ground_truth, categories, results_json)


def _category_mapping(categories):
    """A function from class ids to category ids (``detection_metrics``' ``categories``)."""
    if categories is None:
        return None
    table = {int(k): int(v["id"] if isinstance(v, dict) else v) for k, v in categories.items()}

    def category_of(class_id):
        if class_id not in table:
            raise ValueError(f"class {class_id} has no category in the mapping {table}")
        return table[class_id]

    return category_of


def detection_metrics_of(truths, detections, num_classes, ground_truth=None, categories=None, results_json=None):
    """``detection_metrics`` of given detections: a list (one per image) of ``(boxes [n, 4] yxyx, scores [n],
    classes [n])``; ``truths`` with ``image_id`` when ``ground_truth`` is given."""
    results = []
    category_of = _category_mapping(categories)
    image_ids = _image_ids(truths, ground_truth)
    for image_id, (boxes, scores, classes) in zip(image_ids, detections):
        results.extend(_results(image_id, np.asarray(boxes).reshape(-1, 4), scores, classes, category_of))
    if results_json:
        write_results_json(results_json, results)
    coco = coco_ground_truth(truths, num_classes) if ground_truth is None else load_coco_ground_truth(ground_truth)
    evaluator = _evaluate(coco, results, True, (1, 10, 100), image_ids)
    if evaluator is None:
        return {name: 0.0 for name in DETECTION_METRICS}
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    return {name: float(value) for name, value in zip(DETECTION_METRICS, evaluator.stats)}
