"""Independent NumPy reference of the RPN target pipeline, written straight from the article.

Used by the tests (labels and deltas must agree with rpn_tf's) and by ``benchmarks/bench_encoder.py`` as the
"straightforward NumPy implementation" baseline. Deliberately loop-based where the article is, and shares no code
with ``rpn_tf``.
"""

import numpy as np


def anchors_np(image_size, stride=16, scales=(8, 16, 32), ratios=(0.5, 1.0, 2.0)):
    height, width = image_size
    rows, cols = -(-height // stride), -(-width // stride)
    boxes = []
    for row in range(rows):
        for col in range(cols):
            cy, cx = (row + 0.5) * stride, (col + 0.5) * stride
            for ratio in ratios:
                for scale in scales:
                    h = stride * scale * np.sqrt(ratio)
                    w = stride * scale * np.sqrt(1.0 / ratio)
                    boxes.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
    return np.array(boxes, dtype=np.float64)


def iou_np(boxes_a, boxes_b):
    """IoU in float32 like the library: ties between anchors ("every anchor reaching a GT box's best IoU") are
    defined on the float32 values, and float64 would break or create exact ties on the anchor grid."""
    boxes_a = np.asarray(boxes_a, np.float32)
    boxes_b = np.asarray(boxes_b, np.float32)
    out = np.zeros((len(boxes_a), len(boxes_b)), dtype=np.float32)
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    for j, box in enumerate(boxes_b):
        ih = np.clip(np.minimum(boxes_a[:, 2], box[2]) - np.maximum(boxes_a[:, 0], box[0]), 0, None)
        iw = np.clip(np.minimum(boxes_a[:, 3], box[3]) - np.maximum(boxes_a[:, 1], box[1]), 0, None)
        inter = ih * iw
        union = area_a + (box[2] - box[0]) * (box[3] - box[1]) - inter
        out[:, j] = np.where(union > 0, inter / np.where(union > 0, union, np.float32(1)), np.float32(0))
    return out


def label_np(anchors, gt_boxes, image_size, positive_iou=0.7, negative_iou=0.3, allowed_border=0.0):
    """Returns (labels, matched_gt_index) as the article describes; padding / zero-area GT rows are ignored."""
    height, width = image_size
    num_anchors = len(anchors)
    labels = -np.ones(num_anchors, dtype=np.int32)
    matched = -np.ones(num_anchors, dtype=np.int32)
    if allowed_border < 0:
        inside = np.arange(num_anchors)
    else:
        inside = np.where((anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border)
                          & (anchors[:, 2] <= height + allowed_border)
                          & (anchors[:, 3] <= width + allowed_border))[0]
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    valid_gt = np.where((gt_boxes[:, 2] > gt_boxes[:, 0]) & (gt_boxes[:, 3] > gt_boxes[:, 1]))[0]
    if len(valid_gt) == 0:
        labels[inside] = 0
        return labels, matched
    ious = iou_np(anchors[inside].astype(np.float32), gt_boxes[valid_gt])
    argmax = ious.argmax(axis=1)
    max_ious = ious[np.arange(len(inside)), argmax]
    gt_max = ious.max(axis=0)
    forced = np.where((ious >= gt_max * (1 - 4e-6)) & (ious > 0))[0]  # ties within 4e-6 relative, as documented
    inside_labels = -np.ones(len(inside), dtype=np.int32)
    inside_labels[max_ious < negative_iou] = 0
    inside_labels[forced] = 1
    inside_labels[max_ious >= positive_iou] = 1
    labels[inside] = inside_labels
    matched[inside] = valid_gt[argmax]
    return labels, matched


def sample_np(labels, rng, num_samples=256, positive_fraction=0.5):
    labels = labels.copy()
    positives = np.where(labels == 1)[0]
    max_positives = int(num_samples * positive_fraction)
    if len(positives) > max_positives:
        labels[rng.choice(positives, len(positives) - max_positives, replace=False)] = -1
    num_negatives = num_samples - np.sum(labels == 1)
    negatives = np.where(labels == 0)[0]
    if len(negatives) > num_negatives:
        labels[rng.choice(negatives, len(negatives) - num_negatives, replace=False)] = -1
    return labels


def deltas_np(anchors, gt_boxes, matched, weights=(1.0, 1.0, 1.0, 1.0)):
    deltas = np.zeros((len(anchors), 4), dtype=np.float64)
    rows = np.where(matched >= 0)[0]
    if len(rows) == 0:
        return deltas
    gt = np.asarray(gt_boxes, dtype=np.float64)[matched[rows]]
    anc = anchors[rows]
    ah, aw = anc[:, 2] - anc[:, 0], anc[:, 3] - anc[:, 1]
    ay, ax = anc[:, 0] + ah / 2, anc[:, 1] + aw / 2
    gh, gw = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gy, gx = gt[:, 0] + gh / 2, gt[:, 1] + gw / 2
    deltas[rows] = np.stack([weights[0] * (gy - ay) / ah, weights[1] * (gx - ax) / aw,
                             weights[2] * np.log(gh / ah), weights[3] * np.log(gw / aw)], axis=1)
    return deltas


def encode_np(anchors, gt_boxes, image_size, rng, **label_kwargs):
    """Full reference target computation: labels → balanced sample → deltas."""
    labels, matched = label_np(anchors, gt_boxes, image_size, **label_kwargs)
    return sample_np(labels, rng), deltas_np(anchors, gt_boxes, matched)


def decode_np(deltas, anchors, clip=np.log(1000.0 / 16)):
    ah, aw = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ay, ax = anchors[:, 0] + ah / 2, anchors[:, 1] + aw / 2
    cy, cx = deltas[:, 0] * ah + ay, deltas[:, 1] * aw + ax
    h, w = np.exp(np.minimum(deltas[:, 2], clip)) * ah, np.exp(np.minimum(deltas[:, 3], clip)) * aw
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1)


def proposals_np(anchors, logits, deltas, image_size, pre_nms, post_nms, nms_iou=0.7, min_size=16.0):
    """decode → clip → drop small → top-k → greedy NMS → top-N, for one image."""
    boxes = decode_np(deltas.astype(np.float64), anchors.astype(np.float64))
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, image_size[0])
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, image_size[1])
    keep = np.where((boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size))[0]
    order = keep[np.argsort(-logits[keep], kind="stable")][:pre_nms]
    selected = greedy_nms_np(boxes, order, post_nms, nms_iou)
    return boxes[selected], 1 / (1 + np.exp(-logits[selected]))


def greedy_nms_np(boxes, order, max_output, nms_iou):
    """Greedy NMS over ``boxes[order]`` (best first): the kept indices, at most ``max_output``."""
    selected = []
    while len(order) and len(selected) < max_output:
        best = order[0]
        selected.append(best)
        rest = order[1:]
        order = rest[iou_np(boxes[rest], boxes[best:best + 1])[:, 0] <= nms_iou]
    return selected
