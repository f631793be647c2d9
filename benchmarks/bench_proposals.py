"""Latency of the proposal stage and of one served call, split by stage.

Run: ``python benchmarks/bench_proposals.py [--repeats N] [--skip-vgg]``.

1. ``generate_proposals`` at 800×800 (22 500 anchors → top 12 000 → NMS 0.7 → 2 000, the training counts; 6 000 →
   300 at test), batch 1 and 8, beside TF Model Garden's ``MultilevelROIGenerator`` (tf-models-official 2.20, same
   counts, NMS threshold and minimum size; see ``benchmarks/model_garden.py`` to install it) and the NumPy reference
   (decode → clip → min size → top-k → greedy NMS), timed in the same run.
2. One ``serving_default``-style call on a 400×400 JPEG, split into preprocessing (decode + resize),
   backbone + head, and post-processing (proposals), for VGG16 at 800×800 and the small backbones, without and
   with XLA (``jit_compile`` on the network and on the proposals; the padded NMS under XLA).
3. The exported SavedModel's signatures on the same photo (``OSBS_029`` as a ~100 KB JPEG), batch 1 and 16:
   ``serving_default`` (encoded bytes) against ``image_tensor`` (the decoded uint8 batch) plus the JPEG decode
   alone — the bytes signature's pre-processing share (header checks, decoding with failures named by element).
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
from rpn_tf.data.resize import resize_to_canvas  # noqa: E402
from benchmarks.model_garden import INSTALL, import_model_garden  # noqa: E402
from tests.reference import proposals_np  # noqa: E402


def timed(function, repeats):
    function()  # warm-up (tracing)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats * 1e3


def model_garden_generator(roi_generator, anchors, image_size, batch, training):
    """Model Garden's ``MultilevelROIGenerator`` on the same anchors (one level, ``[B, 50, 50, 9 · 4]``)."""
    config = rpn_tf.ProposalConfig()
    pre_nms, post_nms = config.top_k(training)
    generator = roi_generator.MultilevelROIGenerator(
        pre_nms_top_k=pre_nms, pre_nms_min_size_threshold=config.min_size, nms_iou_threshold=config.nms_iou,
        num_proposals=post_nms, test_pre_nms_top_k=pre_nms, test_pre_nms_min_size_threshold=config.min_size,
        test_nms_iou_threshold=config.nms_iou, test_num_proposals=post_nms)
    grid = [image_size[0] // 16, image_size[1] // 16]
    anchor_boxes = {"4": tf.tile(tf.reshape(anchors, [1, *grid, -1]), [batch, 1, 1, 1])}
    shape = tf.constant([image_size] * batch, tf.float32)

    @tf.function(autograph=False)
    def run(scores, deltas):
        return generator({"4": tf.reshape(deltas, [batch, *grid, -1])}, {"4": tf.reshape(scores, [batch, *grid, -1])},
                         anchor_boxes, shape, training=training)

    return run


def bench_proposal_stage(repeats):
    image_size = (800, 800)
    anchors = rpn_tf.generate_anchors(image_size)
    rng = np.random.default_rng(0)
    model_garden = import_model_garden()
    if model_garden is None:
        print(f"tf-models-official is not installed: Model Garden's column is skipped ({INSTALL})")
    variants = [("combined", False), ("padded", False), ("padded", True)]
    print("proposal stage, 22 500 anchors -> pre-NMS top-k -> NMS 0.7 -> top-N (ms per call); "
          "NMS: combined = tf.image.combined_non_max_suppression, padded = rpn_tf.padded_nms (+xla: jit_compile)")
    print(f"{'mode':>5} {'batch':>5} " + " ".join(f"{n + ('+xla' if x else ''):>13}" for n, x in variants)
          + f" {'model garden':>13} {'MG/best':>8} {'numpy':>9} {'numpy/best':>10}")
    for training in (True, False):
        pre_nms, post_nms = rpn_tf.ProposalConfig().top_k(training)
        for batch in (1, 8):
            logits = tf.constant(rng.normal(size=(batch, anchors.shape[0])).astype(np.float32))
            deltas = tf.constant((rng.normal(size=(batch, anchors.shape[0], 4)) * 0.2).astype(np.float32))
            times = []
            for nms, jit_compile in variants:
                config = rpn_tf.ProposalConfig(nms=nms)
                function = tf.function(
                    lambda scores, boxes, config=config: rpn_tf.generate_proposals(anchors, scores, boxes,
                                                                                   image_size, config, training),
                    jit_compile=jit_compile, autograph=False)
                times.append(timed(lambda function=function: function(logits, deltas), repeats))
            mg_ms = float("nan")
            if model_garden is not None:
                run = model_garden_generator(model_garden[1], anchors, image_size, batch, training)
                mg_ms = timed(lambda: run(logits, deltas), repeats)
            anchors_np, logits_np, deltas_np = anchors.numpy(), logits.numpy(), deltas.numpy()
            np_ms = timed(lambda: [proposals_np(anchors_np, logits_np[i], deltas_np[i], image_size, pre_nms,
                                                post_nms) for i in range(batch)], max(repeats // 5, 1))
            print(f"{'train' if training else 'test':>5} {batch:>5} " + " ".join(f"{t:>13.1f}" for t in times)
                  + f" {mg_ms:>13.1f} {mg_ms / min(times):>7.1f}x {np_ms:>9.1f} {np_ms / min(times):>9.1f}x")


def bench_served_call(backbone, image_size, anchor_config, repeats, jit_compile=False):
    model = rpn_tf.RPNModel(image_size, anchor_config, backbone=backbone, weights=None)
    jpeg = tf.io.encode_jpeg(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8))
    preprocess = tf.function(lambda data: resize_to_canvas(tf.io.decode_jpeg(data, channels=3)[None], image_size)[0])
    network = tf.function(lambda images: model(images, training=False), jit_compile=jit_compile)
    config = rpn_tf.ProposalConfig(nms="padded" if jit_compile else "combined")
    postprocess = tf.function(lambda outputs: model.propose(outputs, training=False, proposal_config=config),
                              jit_compile=jit_compile)
    images = preprocess(jpeg)
    outputs = network(images)
    pre_ms = timed(lambda: preprocess(jpeg), repeats)
    net_ms = timed(lambda: network(images), repeats)
    post_ms = timed(lambda: postprocess(outputs), repeats)
    total = pre_ms + net_ms + post_ms
    print(f"{backbone:>16}{' +xla' if jit_compile else '     '} {image_size[0]}x{image_size[1]}: preprocessing "
          f"{pre_ms:7.1f} ms ({pre_ms / total:4.0%}), backbone+head {net_ms:7.1f} ms ({net_ms / total:4.0%}), "
          f"post-processing {post_ms:6.1f} ms ({post_ms / total:4.0%}), total {total:7.1f} ms")


def bench_served_signatures(repeats):
    import io
    import tempfile

    from PIL import Image

    from rpn_tf.data import deepforest
    from rpn_tf.serving import export_saved_model

    photo, _ = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=92)
    jpeg = buffer.getvalue()
    model = rpn_tf.RPNModel((400, 400), backbone="simple_fpn", weights=None)
    with tempfile.TemporaryDirectory() as base:
        served = tf.saved_model.load(export_saved_model(model, base, "rpn")).signatures
    decode = tf.function(lambda data: tf.map_fn(lambda d: tf.io.decode_jpeg(d, channels=3), data,
                                                fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8)))
    print(f"exported simple_fpn 400x400, OSBS_029 as a {len(jpeg) / 1000:.0f} KB JPEG")
    for batch in (1, 16):
        data = tf.constant([jpeg] * batch)
        images = tf.constant(np.repeat(photo[None], batch, 0))
        # interleaved, so that a slow spell of a shared machine hits every path alike; medians
        times = {"bytes": [], "tensor": [], "decode": []}
        calls = {"bytes": lambda: served["serving_default"](encoded_images=data),
                 "tensor": lambda: served["image_tensor"](images=images), "decode": lambda: decode(data)}
        for call in calls.values():
            call()
        for _ in range(repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - start) * 1000)
        bytes_ms, tensor_ms, decode_ms = (float(np.median(times[name])) for name in ("bytes", "tensor", "decode"))
        print(f"  batch {batch:>2}: serving_default (bytes) {bytes_ms:7.1f} ms, image_tensor {tensor_ms:7.1f} ms, "
              f"JPEG decode {decode_ms:5.1f} ms; bytes / (tensor + decode) {bytes_ms / (tensor_ms + decode_ms):.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-vgg", action="store_true", help="skip the (slow on CPU) VGG16 served call")
    parser.add_argument("--signatures-only", action="store_true", help="only part 3: the served signatures")
    args = parser.parse_args()
    devices = [device.device_type for device in tf.config.list_logical_devices()]
    print(f"tf {tf.__version__}, {os.cpu_count()} CPU cores, devices {devices}")
    if args.signatures_only:
        bench_served_signatures(max(args.repeats, 20))
        return
    bench_proposal_stage(args.repeats)
    bench_served_signatures(max(args.repeats, 20))
    print("one served call on a 400x400 JPEG (batch 1)")
    for jit_compile in (False, True):
        bench_served_call("simple", (400, 400), rpn_tf.AnchorConfig(stride=8, scales=(2.5, 5.0, 10.0)), args.repeats,
                          jit_compile)
        bench_served_call("simple_fpn", (400, 400), None, args.repeats, jit_compile)  # P2–P6, 1 000 proposals
        if not args.skip_vgg:
            bench_served_call("vgg16", (800, 800), rpn_tf.AnchorConfig(), max(args.repeats // 3, 1), jit_compile)


if __name__ == "__main__":
    main()
