"""One training process for the distributed-training tests: ``python distributed_worker.py OUT STRATEGY EPOCHS
[rpn|detector]``.

Builds a tiny ``RPNModel`` (seeded; with ``detector``, a one-class ``FasterRCNN`` on it), trains it with ``DistributedTrainer`` on a fixed synthetic dataset of 8 images
(global batch 4, 2 steps per epoch) and, on the chief, writes the final weights to ``OUT/weights.npz``. With
``TF_CONFIG`` set and ``STRATEGY=multi_worker`` it is one worker of a cluster.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import rpn_tf  # noqa: E402
from rpn_tf.modeling.distributed import DistributedTrainer, is_chief, strategy_from_name  # noqa: E402

IMAGE_SIZE = (64, 64)
GLOBAL_BATCH = 4


def dataset(encoder):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, *IMAGE_SIZE, 3), dtype=np.uint8)
    top_left = rng.uniform(0, 40, (8, 3, 2))
    boxes = np.concatenate([top_left, top_left + rng.uniform(12, 24, (8, 3, 2))], -1).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((images, boxes)).map(encoder).batch(GLOBAL_BATCH, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.with_options(options)


def main(out, strategy_name, epochs, kind="rpn"):
    strategy = strategy_from_name(strategy_name)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = rpn_tf.RPNModel(IMAGE_SIZE, rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)), backbone="simple",
                                head_channels=8, target_encoder_config={"seed": 0})
        if kind == "detector":
            model = rpn_tf.FasterRCNN(1, rpn=model, representation_size=16, seed=0)
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    trainer = DistributedTrainer(model, strategy, os.path.join(out, "checkpoints"))
    history = trainer.fit(dataset(model.target_encoder), epochs=epochs)
    if is_chief(strategy):
        np.savez(os.path.join(out, "weights.npz"), *[w for w in model.get_weights()])
        print("final loss", history.get("loss", [None])[-1], flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:5])
