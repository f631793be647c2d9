"""Per-op time of the encoder's ``ds.map`` path, from a ``tf.profiler`` trace.

Run: ``python benchmarks/profile_encoder.py [--images N] [--boxes G] [--path dense|sparse]``. Traces ``N`` images
through ``ds.map(RpnTargetEncoder(800², seed=0), AUTOTUNE)`` (uint8 800×800 image, G random boxes), reads the
trace's XPlane protobuf and prints the TensorFlow ops that took the most time per image (summed over the tf.data
worker threads), with their share. The trace is kept in ``--logdir`` for TensorBoard's profile plugin.
"""

import argparse
import collections
import glob
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

import rpn_tf  # noqa: E402
from benchmarks.bench_encoder import IMAGE_SIZE, random_gt  # noqa: E402


def op_times(logdir, by_node=False):
    """``{op type (or node name): total picoseconds}`` of the host's TensorFlow op events in the newest trace under
    ``logdir``."""
    path = max(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    space = xplane_pb2.XSpace.FromString(open(path, "rb").read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # Op events are "name:Type"; tf.data's own events ("Iterator::…") and Python frames are not ops.
                if ":" in name and "::" not in name and not name.startswith(("$", "<")):
                    totals[name if by_node else name.split(":")[-1]] += event.duration_ps
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--boxes", type=int, default=10)
    parser.add_argument("--target-format", default="dense", choices=["dense", "sparse"])
    parser.add_argument("--logdir", default=os.path.join(tempfile.gettempdir(), "rpn_tf_encoder_profile"))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--by-node", action="store_true", help="per graph node instead of per op type")
    args = parser.parse_args()
    gt = random_gt(np.random.default_rng(0), 100, args.boxes)
    encoder = rpn_tf.RpnTargetEncoder(IMAGE_SIZE, seed=0, **(
        {} if args.target_format == "dense" else {"target_format": args.target_format}))
    image = tf.zeros([*IMAGE_SIZE, 3], tf.uint8)
    dataset = (tf.data.Dataset.from_tensor_slices(gt).repeat().map(lambda boxes: (image, boxes))
               .map(encoder, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
    iterator = iter(dataset)
    for _ in range(50):  # warm-up: tracing and thread pools
        next(iterator)
    tf.profiler.experimental.start(args.logdir)
    for _ in range(args.images):
        next(iterator)
    tf.profiler.experimental.stop()
    totals = op_times(args.logdir, args.by_node)
    totals.pop("IteratorGetNext", None)  # the consumer waiting for elements, not the encoder's work
    totals = collections.Counter({name: value for name, value in totals.items() if "IteratorGetNext" not in name})
    overall = sum(totals.values())
    print(f"{args.images} images, G={args.boxes}, {args.target_format}: {overall / 1e6 / args.images:.1f} µs of op "
          f"time per image (all threads)")
    print(f"{'node' if args.by_node else 'op type':<40} {'µs/image':>9} {'share':>6}")
    for name, picoseconds in totals.most_common(args.top):
        print(f"{name[-40:]:<40} {picoseconds / 1e6 / args.images:>9.1f} {picoseconds / overall:>6.1%}")


if __name__ == "__main__":
    main()
