"""Throughput of RpnTargetEncoder inside tf.data, beside a straightforward NumPy implementation.

Run: ``python benchmarks/bench_encoder.py [--images N]``. Prints images/s for G ∈ {2, 10, 50} random GT boxes at
800×800 and the ratio TF / NumPy measured in the same run. Not a test: numbers depend on the machine.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import rpn_tf  # noqa: E402
from tests.reference import anchors_np, encode_np  # noqa: E402

IMAGE_SIZE = (800, 800)
REPEATS = 3


def random_gt(rng, count, num_boxes):
    top_left = rng.uniform(0, 700, size=(count, num_boxes, 2))
    sizes = rng.uniform(16, 300, size=(count, num_boxes, 2))
    bottom_right = np.minimum(top_left + sizes, 800)
    return np.concatenate([top_left, bottom_right], axis=-1).astype(np.float32)


def bench_tf(gt, repeats, with_image=True):
    """``ds.map(encoder)`` on (uint8 800×800 image, boxes); or, without the image, ``ds.map(encoder.encode)``."""
    encoder = rpn_tf.RpnTargetEncoder(IMAGE_SIZE, seed=0)
    image = tf.zeros([*IMAGE_SIZE, 3], tf.uint8)
    dataset = tf.data.Dataset.from_tensor_slices(gt).repeat(repeats)
    if with_image:
        dataset = dataset.map(lambda boxes: (image, boxes)).map(encoder, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(encoder.encode, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    for _ in dataset.take(16):  # warm-up: tracing and thread pools
        pass
    rates = []
    for _ in range(REPEATS):  # best of REPEATS passes: a shared 2-core machine is noisy
        start = time.perf_counter()
        count = 0
        for _ in dataset:
            count += 1
        rates.append(count / (time.perf_counter() - start))
    return max(rates)


def bench_numpy(gt, count):
    anchors = anchors_np(IMAGE_SIZE)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for index in range(count):
        encode_np(anchors, gt[index % len(gt)], IMAGE_SIZE, rng)
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=2000, help="images per pass for TF (best of 3 passes)")
    parser.add_argument("--numpy-images", type=int, default=100, help="images per measurement for NumPy")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"tf {tf.__version__}, {os.cpu_count()} CPU cores, image {IMAGE_SIZE}, anchors "
          f"{rpn_tf.num_anchors(IMAGE_SIZE)}")
    print(f"{'G':>4} {'tf.data img/s':>14} {'(GT only)':>10} {'numpy img/s':>12} {'ratio':>7}")
    for num_boxes in (2, 10, 50):
        gt = random_gt(rng, 100, num_boxes)
        repeats = max(args.images // len(gt), 1)
        tf_rate = bench_tf(gt, repeats)
        gt_only_rate = bench_tf(gt, repeats, with_image=False)
        np_rate = bench_numpy(gt, args.numpy_images)
        print(f"{num_boxes:>4} {tf_rate:>14.0f} {gt_only_rate:>10.0f} {np_rate:>12.1f} {tf_rate / np_rate:>7.1f}x")


if __name__ == "__main__":
    main()
