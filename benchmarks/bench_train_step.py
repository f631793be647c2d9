"""Training-step figures on an accelerator (runs on CPU too, slowly): what the RPN costs inside a Faster R-CNN step.

Run: ``python benchmarks/bench_train_step.py [--model article|fpn|both] [--batch 2] [--steps 20] [--small]``.

For the article model (VGG16, 800², stride 16, 9 anchors) and the FPN model (ResNet-50-FPN, P2–P6), with synthetic
images and 10 random GT boxes each:

  * ``model.fit`` steps/s with targets from ``ds.map(RpnTargetEncoder)`` (tf.data labeling on the host CPU),
  * the same with only padded ``gt_boxes`` in the batch (labeling in the graph, on the device),
  * each with mixed precision (``mixed_float16``) off and on, and with ``jit_compile`` on,
  * the share of a step spent outside the backbone — the RPN head, the loss and in-graph labeling — measured as
    1 − (backbone-only step time / full step time), where the backbone-only step differentiates a dummy loss on the
    backbone's features (goal: ≤ 10 % on a GPU).

Not a test: numbers depend on the machine. ``--small`` shrinks everything (320², 2 steps) to check it runs on CPU.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import rpn_tf  # noqa: E402
from rpn_tf.modeling.backbones import feature_list  # noqa: E402

MODELS = {
    "article": dict(backbone="vgg16", anchor_config=None),
    "fpn": dict(backbone="resnet50_fpn", anchor_config=rpn_tf.MultiLevelAnchorConfig.fpn()),
}


def synthetic(image_size, count, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (count, *image_size, 3), dtype=np.uint8)
    top_left = rng.uniform(0, np.array(image_size) * 0.8, (count, 10, 2))
    extent = rng.uniform(24, np.array(image_size) * 0.3, (count, 10, 2))
    boxes = np.concatenate([top_left, np.minimum(top_left + extent, image_size)], -1).astype(np.float32)
    return images, boxes


def datasets(model, images, boxes, batch):
    encoder = model.target_encoder
    host = (tf.data.Dataset.from_tensor_slices((images, boxes)).map(encoder, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch, drop_remainder=True).repeat().prefetch(tf.data.AUTOTUNE))
    device = host.map(lambda image, targets: (image, {"gt_boxes": targets["gt_boxes"],
                                                      "valid_size": targets["valid_size"]}))
    return {"tf.data labels": host, "in-graph labels": device}


def steps_per_second(model, dataset, steps):
    model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)  # compile and warm up
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps / (time.perf_counter() - start)


def backbone_steps_per_second(model, images, batch, steps, jit_compile):
    """Forward and backward through the backbone only (a dummy loss on its features): the part that is not RPN."""
    backbone, optimizer = model.backbone, keras.optimizers.SGD(1e-6)
    inputs = tf.cast(tf.constant(images[:batch]), tf.float32)

    @tf.function(jit_compile=jit_compile)
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_mean(tf.cast(f, tf.float32)) for f in feature_list(backbone(x, training=True))])
        optimizer.apply(tape.gradient(loss, backbone.trainable_variables), backbone.trainable_variables)
        return loss

    step(inputs).numpy()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(inputs)
    loss.numpy()
    return steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["article", "fpn", "both"], default="both")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--small", action="store_true", help="320², 2 steps: a quick check that it runs on CPU")
    args = parser.parse_args()
    image_size, steps = ((320, 320), 2) if args.small else ((800, 800), args.steps)
    devices = [d.name for d in tf.config.list_logical_devices() if d.device_type != "CPU"] or ["CPU only"]
    print(f"tf {tf.__version__}, keras {keras.__version__}, devices {devices}, image {image_size}, batch {args.batch}")
    images, boxes = synthetic(image_size, 4 * args.batch)
    for name in (["article", "fpn"] if args.model == "both" else [args.model]):
        for precision, jit_compile in (("float32", False), ("mixed_float16", False), ("float32", True)):
            keras.mixed_precision.set_global_policy(precision)
            spec = MODELS[name]
            anchor_config = spec["anchor_config"] or rpn_tf.AnchorConfig()
            model = rpn_tf.RPNModel(image_size, anchor_config, backbone=spec["backbone"], weights=None)
            model.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9), jit_compile=jit_compile)
            rates = {path: steps_per_second(model, dataset, steps)
                     for path, dataset in datasets(model, images, boxes, args.batch).items()}
            backbone_rate = backbone_steps_per_second(model, images, args.batch, steps, jit_compile)
            share = {path: 1.0 - rate / backbone_rate for path, rate in rates.items()}
            print(f"{name:>8} {precision:>13}{' +xla' if jit_compile else '     '}: "
                  + " | ".join(f"{path} {rate:6.2f} steps/s (RPN share {share[path]:5.1%})"
                               for path, rate in rates.items())
                  + f" | backbone only {backbone_rate:6.2f} steps/s")
    keras.mixed_precision.set_global_policy("float32")


if __name__ == "__main__":
    main()
