"""A seeded training run in its own process (``test_reproducibility.py``): prints the SHA-256 of the detector's
weights after a few ``fit`` steps, for each seed given on the command line (with op determinism unless
``--no-op-determinism`` is given)."""

import hashlib
import sys

import numpy as np
import tensorflow as tf

import keras
import rpn_tf

SIZE = 96


def run(seed):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(123)  # the data are fixed: only the seed may change the result
    images = rng.integers(0, 255, (4, SIZE, SIZE, 3)).astype(np.uint8)
    boxes = -np.ones((4, 4, 4), np.float32)
    classes = -np.ones((4, 4), np.int32)
    for i in range(4):
        for j in range(3):
            y, x = rng.integers(0, SIZE - 40, 2)
            side = int(rng.integers(12, 40))
            boxes[i, j] = [y, x, y + side, x + side]
            classes[i, j] = 1 + j % 2
    # no seed anywhere: initialisation, anchor sampling (in the step and in the tf.data encoder) and ROI sampling
    # all derive from the global seed
    rpn = rpn_tf.RPNModel((SIZE, SIZE), backbone="simple_fpn",
                          anchor_config=rpn_tf.MultiLevelAnchorConfig.fpn(smallest_size=16.0),
                          target_encoder_config={"max_boxes": 4})
    model = rpn_tf.FasterRCNN(2, rpn=rpn, representation_size=16)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    in_step = tf.data.Dataset.from_tensor_slices((images, {"gt_boxes": boxes, "gt_classes": classes})).batch(2)
    encoded = tf.data.Dataset.from_tensor_slices({"image": images, "boxes": boxes, "classes": classes}).map(
        model.target_encoder).batch(2)
    model.fit(in_step, epochs=1, verbose=0)
    model.fit(encoded, epochs=1, verbose=0)
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


if __name__ == "__main__":
    seeds = [arg for arg in sys.argv[1:] if arg != "--no-op-determinism"]
    if "--no-op-determinism" not in sys.argv:
        tf.config.experimental.enable_op_determinism()
    for seed in seeds:
        print(seed, run(int(seed)), flush=True)
