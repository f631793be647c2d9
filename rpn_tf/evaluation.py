"""Evaluation of proposals over a dataset."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from rpn_tf.modeling.metrics import ProposalRecall


def evaluate_recall(model, dataset, top_ns=(100, 300, 1000), batch_size=4):
    """Recall@N at IoU 0.5 / 0.7 and AR@N for each N over an element dataset (``image``, ``boxes``,
    ``classes``), from real proposals: the test-time pre-NMS count, and ``max(top_ns)`` kept after NMS.

    Returns a dict such as ``{"ar@300": …, "recall@300_iou0.5": …, "recall@300_iou0.7": …}``.
    """
    config = dataclasses.replace(model.proposal_config, post_nms_top_k_test=max(top_ns))
    metrics = [ProposalRecall(top_n=n) for n in top_ns]
    encoded = dataset.map(model.target_encoder, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)

    @tf.function
    def propose(images):
        return model.propose(model(images, training=False), training=False, proposal_config=config)

    for images, targets in encoded:
        proposals = propose(images)
        for metric in metrics:
            metric.update_state(targets["gt_boxes"], proposals["boxes"], proposals["num_proposals"])
    results = {}
    for metric in metrics:
        results.update({key: float(value) for key, value in metric.result().items()})
    return {key: results[key] for key in sorted(results, key=lambda k: (k.split("@")[0], k))}
