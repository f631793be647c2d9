"""Target-encoding throughput: rpn-tf's encoder paths beside TF Model Garden's ``RpnAnchorLabeler`` and NumPy.

Run: ``python benchmarks/bench_encoder.py [--images N] [--boxes 2 10 50]``. At 800×800 with the article's anchors
(22 500), for G random GT boxes per image, in one run:

  ``encoder``       ``ds.map(RpnTargetEncoder(...), AUTOTUNE)`` on (uint8 800×800 image, boxes): the default path
                    of a training pipeline (dense targets: labels ``[A]``, deltas ``[A, 4]``; core TensorFlow ops)
  ``encoder-native`` the same with ``implementation="native"``: the opt-in native kernels of ``rpn_tf.ops.native``
                    (bit-identical targets; built into the cache first if needed)
  ``encode``        ``ds.map(encoder.encode)`` on the boxes only (dense targets, TensorFlow ops); ``encode-native``
  ``sparse``        ``ds.map(RpnTargetEncoder(..., target_format="sparse"))`` on (image, boxes): the 256 sampled
                    anchors' indices, labels and deltas instead of dense targets; ``sparse-native``
  ``batched``       ``ds.batch(32).map(encoder.encode)``: one graph call per batch of padded GT; ``batched-native``
  ``MG``            ``ds.map`` of Model Garden's ``RpnAnchorLabeler.label_anchors`` on the boxes (tf-models-official
                    2.20, the same anchors, thresholds and sample size; see ``benchmarks/model_garden.py``)
  ``MG+image``      the same on (image, boxes), the image passed through: the same pipeline shape as ``encoder``
  ``numpy``         the straightforward NumPy encoder of ``tests/reference.py``, one image at a time

and prints images/s and the ratios like for like: ``encoder`` / ``MG+image`` (the default path of a training
pipeline), ``encode`` / ``MG`` (boxes only), ``sparse`` / ``MG+image``, ``batched`` / ``MG``, and the ``-native``
paths'. Each path's best of 5 passes, the paths taking turns (a shared 2-core machine is noisy). ``--no-native``
leaves the native paths out (no compiler needed).
Not a test: numbers depend on the machine.
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
from benchmarks.model_garden import INSTALL, import_model_garden  # noqa: E402
from tests.reference import anchors_np, encode_np  # noqa: E402

IMAGE_SIZE = (800, 800)
BATCH = 32


def random_gt(rng, count, num_boxes):
    top_left = rng.uniform(0, 700, size=(count, num_boxes, 2))
    sizes = rng.uniform(16, 300, size=(count, num_boxes, 2))
    bottom_right = np.minimum(top_left + sizes, 800)
    return np.concatenate([top_left, bottom_right], axis=-1).astype(np.float32)


def interleaved_rates(datasets, rounds):
    """``{name: images/s}``: the best pass of each dataset over ``rounds`` rounds, the datasets taking turns within
    a round, so that a slow spell of a shared machine hits every path alike. ``datasets``: ``{name: (dataset,
    images per element)}``."""
    datasets = {name: (dataset.prefetch(tf.data.AUTOTUNE), per) for name, (dataset, per) in datasets.items()}
    for dataset, _ in datasets.values():
        for _ in dataset.take(8):  # warm-up: tracing and thread pools
            pass
    rates = dict.fromkeys(datasets, 0.0)
    for _ in range(rounds):
        for name, (dataset, per) in datasets.items():
            start = time.perf_counter()
            count = sum(1 for _ in dataset)
            rates[name] = max(rates[name], count * per / (time.perf_counter() - start))
    return rates


def tf_paths(gt, repeats, with_native=True):
    """rpn-tf's paths: the default (TensorFlow ops) and, with ``with_native``, the ``-native`` ones
    (``implementation="native"``)."""
    boxes = tf.data.Dataset.from_tensor_slices(gt).repeat(repeats)
    image = tf.zeros([*IMAGE_SIZE, 3], tf.uint8)
    with_image = boxes.map(lambda b: (image, b))
    autotune = tf.data.AUTOTUNE
    paths = {}
    for suffix, implementation in (("", "auto"), ("-native", "native"))[:2 if with_native else 1]:
        dense = rpn_tf.RpnTargetEncoder(IMAGE_SIZE, seed=0, implementation=implementation)
        sparse = rpn_tf.RpnTargetEncoder(IMAGE_SIZE, seed=0, target_format="sparse", implementation=implementation)
        paths.update({
            "encoder" + suffix: (with_image.map(dense, num_parallel_calls=autotune), 1),
            "encode" + suffix: (boxes.map(dense.encode, num_parallel_calls=autotune), 1),
            "sparse" + suffix: (with_image.map(sparse, num_parallel_calls=autotune), 1),
            "batched" + suffix: (boxes.batch(BATCH).map(dense.encode, num_parallel_calls=autotune), BATCH),
        })
    return paths


def model_garden_paths(anchor_module, gt, repeats):
    """Model Garden's labeler on the same anchors (one level, ``[50, 50, 9 · 4]``), thresholds and sample size."""
    labeler = anchor_module.RpnAnchorLabeler(match_threshold=0.7, unmatched_threshold=0.3,
                                             rpn_batch_size_per_im=256, rpn_fg_fraction=0.5)
    anchors = rpn_tf.generate_anchors(IMAGE_SIZE)
    grid = IMAGE_SIZE[0] // 16
    anchor_boxes = {"4": tf.reshape(anchors, [grid, grid, -1])}

    def label(boxes):
        return labeler.label_anchors(anchor_boxes, boxes, tf.ones([tf.shape(boxes)[0], 1], tf.int32))

    boxes = tf.data.Dataset.from_tensor_slices(gt).repeat(repeats)
    image = tf.zeros([*IMAGE_SIZE, 3], tf.uint8)
    autotune = tf.data.AUTOTUNE
    return {"MG": (boxes.map(label, num_parallel_calls=autotune), 1),
            "MG+image": (boxes.map(lambda b: (image, b)).map(lambda i, b: (i, label(b)), num_parallel_calls=autotune),
                         1)}


def numpy_path(gt, count):
    anchors = anchors_np(IMAGE_SIZE)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for index in range(count):
        encode_np(anchors, gt[index % len(gt)], IMAGE_SIZE, rng)
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="images per pass (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="passes per path, taking turns (default 5)")
    parser.add_argument("--numpy-images", type=int, default=50, help="images timed for NumPy (default 50)")
    parser.add_argument("--boxes", type=int, nargs="+", default=[2, 10, 50], help="GT boxes per image (G)")
    parser.add_argument("--no-native", action="store_true", help="leave out the opt-in native kernels")
    args = parser.parse_args()
    with_native = not args.no_native
    if with_native:
        from rpn_tf.ops import native

        print(f"native kernels: {native.build()} ({native.status()['flags']})")
    model_garden = import_model_garden()
    if model_garden is None:
        print(f"tf-models-official is not installed: Model Garden's column is skipped ({INSTALL})")
    rng = np.random.default_rng(0)
    print(f"tf {tf.__version__}, {os.cpu_count()} CPU cores, image {IMAGE_SIZE}, "
          f"{rpn_tf.num_anchors(IMAGE_SIZE)} anchors; images/s")
    pairs = [(ours + suffix, theirs) for suffix in ("", "-native")[:2 if with_native else 1]
             for ours, theirs in (("encoder", "MG+image"), ("encode", "MG"), ("sparse", "MG+image"),
                                  ("batched", "MG"))]
    for num_boxes in args.boxes:
        gt = random_gt(rng, 100, num_boxes)
        repeats = max(args.images // len(gt), 1)
        datasets = tf_paths(gt, repeats, with_native)
        if model_garden is not None:  # a quarter of the images: it is slower
            datasets.update(model_garden_paths(model_garden[0], gt, max(repeats // 4, 1)))
        rates = interleaved_rates(datasets, args.rounds)
        rates["numpy"] = numpy_path(gt, args.numpy_images)
        print(f"G={num_boxes:<3} " + " | ".join(f"{name} {value:,.0f}" for name, value in rates.items()))
        if model_garden is not None:
            print("       ratios: " + " | ".join(f"{ours} / {theirs} {rates[ours] / rates[theirs]:.1f}×"
                                              for ours, theirs in pairs))


if __name__ == "__main__":
    main()
