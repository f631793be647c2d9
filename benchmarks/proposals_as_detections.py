"""A one-class detector's AP beside its own RPN's top-100 proposals scored as detections (objectness as the
score), both by pycocotools on deepforest's ``OSBS_029`` — the README's "for scale" row.

Run: ``python benchmarks/proposals_as_detections.py DETECTOR.keras [DETECTOR.keras ...]`` with the
``faster_rcnn_deepforest.keras`` files written by ``rpn-tf demo --seed S`` or
``python -m rpn_tf.tools.train_deepforest --seed S --detector-epochs 15``; prints one line per model and the
mean ± sample std over the models given.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads: no CUDA or cost-model lines

from rpn_tf.tools.options import import_tensorflow  # noqa: E402

import_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import rpn_tf  # noqa: E402, F401  (registers the classes for keras.saving)
from rpn_tf import coco_eval  # noqa: E402
from rpn_tf.tools.train_deepforest import evaluation_data  # noqa: E402

KEYS = ("AP", "AP50", "AP75", "AR100")


def proposals_as_detections(detector, top_k=100):
    """pycocotools' detection metrics of ``detector.rpn``'s top ``top_k`` proposals, class 1, objectness as score."""
    rpn = detector.rpn
    config = dataclasses.replace(rpn.proposal_config, post_nms_top_k_test=top_k)
    truths, detections = [], []
    for image, truth in coco_eval._elements(evaluation_data()):
        boxes, scores, count = (t.numpy() for t in coco_eval._proposals(rpn, tf.constant(image)[None], config))
        n = int(count[0])
        truths.append(truth)
        detections.append((boxes[0, :n], scores[0, :n], np.ones([n], np.int32)))
    return coco_eval.detection_metrics_of(truths, detections, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="faster_rcnn_deepforest.keras files")
    args = parser.parse_args()
    rows = {"detector": [], "proposals": []}
    for path in args.models:
        detector = keras.saving.load_model(path)
        rows["detector"].append(coco_eval.detection_metrics(detector, evaluation_data()))
        rows["proposals"].append(proposals_as_detections(detector))
        print(path, *(f"{name}: " + ", ".join(f"{k} {rows[name][-1][k]:.3f}" for k in KEYS) for name in rows),
              sep="\n  ")
    print(f"({coco_eval.BOX_AREA_NOTE})")
    ddof = 1 if len(args.models) > 1 else 0
    for name, values in rows.items():
        print(f"{name} over {len(values)} models: " + ", ".join(
            f"{k} {np.mean([v[k] for v in values]):.3f} ± {np.std([v[k] for v in values], ddof=ddof):.3f}"
            for k in KEYS))


if __name__ == "__main__":
    main()
