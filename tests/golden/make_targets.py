"""Writes ``targets.npz``: encoder outputs pinned so that faster implementations must reproduce them bit for bit.

Run from the repository root: ``python tests/golden/make_targets.py``. The stored file was written by the encoder of
commit e6ade00 (before the issue-12 rewrite of matching, sampling and the dense scatter); rerun only when the
targets are meant to change, and say so in the commit.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import tensorflow as tf  # noqa: E402

import rpn_tf  # noqa: E402

IMAGE_SIZE = (320, 320)
ANCHORS = rpn_tf.AnchorConfig(stride=16, scales=(2.0, 4.0, 8.0))


def cases():
    """``{name: (image shape, boxes)}``: G = 0, 1, 12, duplicates, sub-pixel boxes, a letterboxed photo."""
    rng = np.random.default_rng(12)

    def boxes(count, size=320):
        top_left = rng.uniform(0, size - 12, (count, 2))
        extent = rng.uniform(2, 150, (count, 2))
        return np.concatenate([top_left, np.minimum(top_left + extent, size)], 1).astype(np.float32)

    some = boxes(4)
    return {
        "none": ((320, 320, 3), np.zeros((0, 4), np.float32)),
        "one": ((320, 320, 3), boxes(1)),
        "twelve": ((320, 320, 3), boxes(12)),
        "duplicates": ((320, 320, 3), np.concatenate([some, some[:2]])),
        "tiny": ((320, 320, 3), np.concatenate([boxes(2), [[5, 5, 5.2, 5.3], [100, 100, 100.4, 130]]]).astype(np.float32)),
        "letterbox": ((200, 320, 3), boxes(6, 200)),
    }


def outputs(implementation="auto"):
    """``{key: array}`` of the per-image path (``ds.map(encoder)``) and the batched ``encode`` path, two seeds;
    ``implementation``: ``TargetConfig.implementation`` (``"native"``: the native kernels on both paths)."""
    result = {}
    for seed in (0, 5):
        encoder = rpn_tf.RpnTargetEncoder(IMAGE_SIZE, ANCHORS, seed=seed, implementation=implementation)
        padded = np.full((len(cases()), 16, 4), -1, np.float32)
        sizes = []
        for index, (name, (shape, boxes)) in enumerate(cases().items()):
            _, targets = encoder(tf.zeros(shape, tf.uint8), boxes)
            result[f"{seed}/{name}/labels"] = targets["rpn_labels"].numpy().astype(np.int8)
            result[f"{seed}/{name}/deltas"] = targets["rpn_deltas"].numpy()
            padded[index, :targets["num_boxes"]] = targets["gt_boxes"][:targets["num_boxes"]].numpy()
            sizes.append(targets["valid_size"].numpy())
        batched = encoder.encode(padded, valid_sizes=np.stack(sizes))
        result[f"{seed}/batched/labels"] = batched["rpn_labels"].numpy().astype(np.int8)
        result[f"{seed}/batched/deltas"] = batched["rpn_deltas"].numpy()
    return result


if __name__ == "__main__":
    np.savez_compressed(os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets.npz"), **outputs())
