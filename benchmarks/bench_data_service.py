"""Encoder throughput locally and through the tf.data service on loopback (1 and 2 workers, in this process).

Run: ``python benchmarks/bench_data_service.py [--images N] [--image-size 400]``. The same pipeline — uint8 images
with 10 boxes each → ``ds.map(RpnTargetEncoder)`` → ``batch(8)`` — read locally and through
``rpn_tf.data.service.distribute`` (``distributed_epoch``) with one and two ``WorkerServer``s beside a
``DispatchServer``, all on this machine. On a 2-core machine the service can only add overhead (serialising batches
and moving them over gRPC, workers competing with the reader for the same cores); on a cluster each worker brings
its own cores, so throughput grows with workers until the trainer's network or step time limits it.
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
from rpn_tf.data import service  # noqa: E402


def pipeline(images, image_size):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (16, *image_size, 3), dtype=np.uint8)
    top_left = rng.uniform(0, image_size[0] * 0.7, (images, 10, 2))
    boxes = np.concatenate([top_left, top_left + rng.uniform(16, image_size[0] * 0.3, (images, 10, 2))], -1)
    encoder = rpn_tf.RpnTargetEncoder(image_size, seed=0)
    return (tf.data.Dataset.from_tensor_slices((np.arange(images) % 16, boxes.astype(np.float32)))
            .map(lambda index, b: (tf.gather(pixels, index), b))
            .map(encoder, num_parallel_calls=tf.data.AUTOTUNE).batch(8))


def images_per_second(dataset, images):
    for _ in dataset.take(2):  # warm-up
        pass
    start = time.perf_counter()
    count = sum(int(batch[0].shape[0]) for batch in dataset)
    assert count == images, (count, images)
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--image-size", type=int, default=400)
    args = parser.parse_args()
    size = (args.image_size, args.image_size)
    print(f"tf {tf.__version__}, {os.cpu_count()} CPU cores, {args.images} images of {size}, 10 boxes each")
    print(f"local: {images_per_second(pipeline(args.images, size).prefetch(2), args.images):7.0f} images/s")
    for workers in (1, 2):
        dispatcher = service.start_dispatcher()
        servers = [service.start_worker(dispatcher.target) for _ in range(workers)]
        try:
            remote = service.distribute(pipeline(args.images, size), dispatcher.target, "distributed_epoch")
            rate = images_per_second(remote.prefetch(2), args.images)
            print(f"tf.data service, {workers} worker{'s' if workers > 1 else ''}: {rate:7.0f} images/s")
        finally:
            for server in servers + [dispatcher]:
                server._stop()


if __name__ == "__main__":
    main()
