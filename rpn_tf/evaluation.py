"""Evaluation of proposals over a dataset."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from rpn_tf.metrics import ProposalRecall
from rpn_tf.proposals import generate_proposals


def evaluate_recall(model, dataset, top_ns=(100, 300, 1000), batch_size=4):
    """Recall@N at IoU 0.5 / 0.7 and AR@N for each N over an element dataset (``image``, ``boxes``,
    ``classes``), from real proposals: the test-time pre-NMS count, and ``max(top_ns)`` kept after NMS.

    Returns a dict such as ``{"ar@300": …, "recall@300_iou0.5": …, "recall@300_iou0.7": …}``.
    """
    config = dataclasses.replace(model.proposal_config, post_nms_top_k_test=max(top_ns))
    metrics = [ProposalRecall(top_n=n) for n in top_ns]
    encoded = dataset.map(model.target_encoder, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    for images, targets in encoded:
        outputs = model(images, training=False)
        proposals = generate_proposals(model.anchors, outputs["objectness_logits"], outputs["box_deltas"],
                                       model.image_size, config)
        for metric in metrics:
            metric.update_state(targets["gt_boxes"], proposals["boxes"], proposals["num_proposals"])
    results = {}
    for metric in metrics:
        results.update({key: float(value) for key, value in metric.result().items()})
    return {key: results[key] for key in sorted(results, key=lambda k: (k.split("@")[0], k))}
