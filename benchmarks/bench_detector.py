"""The second stage's ops beside Model Garden's, in one run, and one detector call split into its stages.

1. ROI Align: ``rpn_tf.multilevel_roi_align`` (graph, and XLA) vs Model Garden's ``multilevel_crop_and_resize``
   (both: P2–P5 of an 800 × 800 image, 256 channels, 7 × 7 outputs).
2. Detection post-processing: ``rpn_tf.ops.detections.postprocess_detections`` (``combined`` and ``padded`` under
   XLA) vs Model Garden's ``DetectionGenerator`` (its default ``v2`` NMS) on the same class-specific deltas.
3. One ``FasterRCNN`` call (the deepforest detector: ``simple_fpn`` at 400 × 400, one class), split into
   pre-processing (decode-free: ``to_canvas``), backbone, RPN (head + proposals), ROI heads (ROI Align + box head)
   and post-processing.

Run on a quiet machine: ``python benchmarks/bench_detector.py [--repeats N] [--batch B]``. Model Garden (benchmarks
only): ``pip install --no-deps tf-models-official==2.20.0 tf-keras==2.21.0 pyyaml gin-config``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rpn_tf  # noqa: E402
from benchmarks.model_garden import INSTALL, import_model_garden  # noqa: E402
from rpn_tf.ops.detections import postprocess_detections  # noqa: E402



def model_garden():
    """``(spatial_transform_ops, detection_generator)`` of Model Garden, or ``None``; ``detection_generator``
    imports ``preprocess_ops`` (→ augment → every config, TFDS) for its v1 NMS path only, so it stands in empty."""
    return import_model_garden(("official.vision.ops.spatial_transform_ops",
                                "official.vision.modeling.layers.detection_generator"),
                               empty=("official.vision.ops.preprocess_ops",))


def timed(function, *args, repeats=10):
    """Median milliseconds of ``function(*args)`` after one warm-up call."""
    function(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*args)
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, result)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def random_rois(rng, batch, count, size=800.0):
    sides = np.exp(rng.uniform(np.log(16), np.log(600), (batch, count, 2)))
    corners = rng.uniform(0, 1, (batch, count, 2)) * (size - sides)
    return tf.constant(np.concatenate([corners, corners + sides], -1), tf.float32)


def bench_roi_align(mg, batch, repeats, rng):
    strides = (4, 8, 16, 32)
    features = [tf.constant(rng.normal(size=(batch, 800 // s, 800 // s, 256)), tf.float32) for s in strides]
    rois = random_rois(rng, batch, 512)
    ours = tf.function(lambda f, r: rpn_tf.multilevel_roi_align(list(f), strides, r))
    ours_xla = tf.function(lambda f, r: rpn_tf.multilevel_roi_align(list(f), strides, r), jit_compile=True)
    rows = [("rpn-tf multilevel_roi_align", timed(ours, features, rois, repeats=repeats)),
            ("rpn-tf multilevel_roi_align, XLA", timed(ours_xla, features, rois, repeats=repeats))]
    if mg:
        levels = {str(level): f for level, f in zip(range(2, 6), features)}
        theirs = tf.function(lambda f, r: mg[0].multilevel_crop_and_resize(f, r, output_size=7))
        rows.append(("Model Garden multilevel_crop_and_resize", timed(theirs, levels, rois, repeats=repeats)))
    return rows


def bench_postprocess(mg, batch, repeats, rng, num_classes):
    count = 1000
    rois = random_rois(rng, batch, count)
    logits = tf.constant(rng.normal(size=(batch, count, num_classes + 1)) * 2, tf.float32)
    deltas = tf.constant(rng.normal(size=(batch, count, num_classes, 4)) * 0.3, tf.float32)
    sizes = tf.constant([[800.0, 800.0]] * batch)
    coder = rpn_tf.BoxCoder((10.0, 10.0, 5.0, 5.0))
    config = rpn_tf.DetectionConfig()
    combined = tf.function(lambda *a: postprocess_detections(*a, nms="combined"))
    padded = tf.function(lambda *a: postprocess_detections(*a, nms="padded"), jit_compile=True)
    args = (rois, tf.fill([batch], count), logits, deltas, coder, sizes, config)
    rows = [(f"rpn-tf postprocess_detections combined, K={num_classes}", timed(combined, *args, repeats=repeats)),
            (f"rpn-tf postprocess_detections padded + XLA, K={num_classes}", timed(padded, *args, repeats=repeats))]
    if mg:
        generator = mg[1].DetectionGenerator(pre_nms_top_k=5000, pre_nms_score_threshold=0.05,
                                             nms_iou_threshold=0.5, max_num_detections=100)
        raw_boxes = tf.reshape(tf.concat([tf.zeros_like(deltas[:, :, :1]), deltas], 2), [batch, count, -1])
        theirs = tf.function(lambda b, s, a, i: generator(b, s, a, i, regression_weights=[10.0, 10.0, 5.0, 5.0]))
        rows.append((f"Model Garden DetectionGenerator (v2 NMS), K={num_classes}",
                     timed(theirs, raw_boxes, logits, rois, sizes, repeats=repeats)))
    return rows


def bench_served_call(batch, repeats):
    from rpn_tf.tools.train_deepforest import RECIPES

    recipe = RECIPES["fpn"]
    rpn = rpn_tf.RPNModel((400, 400), backbone="simple_fpn", anchor_config=recipe["anchor_config"],
                          proposal_config=recipe["proposal_config"])
    detector = rpn_tf.FasterRCNN(1, rpn=rpn, representation_size=256)
    images = tf.cast(tf.random.uniform([batch, 300, 450, 3], 0, 255), tf.uint8)
    to_canvas = tf.function(detector.to_canvas)
    canvas, scale, valid, original = to_canvas(images)
    backbone = tf.function(lambda x: rpn.features(x))
    features = backbone(canvas)
    config = detector._proposal_config()
    propose = tf.function(lambda f, v: rpn.propose(rpn.head_outputs(f), proposal_config=config, valid_sizes=v))
    proposals = propose(features, valid)
    heads = tf.function(lambda f, r: detector.box_head(detector._roi_features(f, r)))
    logits, deltas = heads(features, proposals["boxes"])
    post = tf.function(lambda r, n, l, d, v: postprocess_detections(
        r, n, l, d, detector.roi_sampler_config.box_coder, v, detector.detection_config, "combined"))
    whole = tf.function(lambda x: detector.detections_in_original_pixels(*detector.to_canvas(x)))
    return [("pre-processing (to_canvas)", timed(to_canvas, images, repeats=repeats)),
            ("backbone", timed(backbone, canvas, repeats=repeats)),
            ("RPN head + proposals", timed(propose, features, valid, repeats=repeats)),
            ("ROI Align + box head", timed(heads, features, proposals["boxes"], repeats=repeats)),
            ("post-processing", timed(post, proposals["boxes"], proposals["num_proposals"], logits, deltas, valid,
                                      repeats=repeats)),
            ("the whole call (one function)", timed(whole, images, repeats=repeats))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args(argv)
    mg = model_garden()
    if mg is None:
        print(f"Model Garden is not installed ({INSTALL}): rpn-tf's figures only")
    rng = np.random.default_rng(0)
    sections = [("ROI Align, P2-P5 of 800x800, 256 channels, 512 ROIs per image",
                 bench_roi_align(mg, args.batch, args.repeats, rng))]
    for num_classes in (1, 80):
        sections.append((f"detection post-processing, 1000 ROIs per image, {num_classes} classes",
                         bench_postprocess(mg, args.batch, args.repeats, rng, num_classes)))
    sections.append(("one FasterRCNN call (deepforest detector, 300x450 images onto 400x400)",
                     bench_served_call(args.batch, args.repeats)))
    print(f"batch {args.batch}, median of {args.repeats} calls, {os.cpu_count()} CPU cores, TF {tf.__version__}")
    for title, rows in sections:
        print(f"\n{title}")
        for name, ms in rows:
            print(f"  {name:<60} {ms:9.1f} ms")


if __name__ == "__main__":
    main()
