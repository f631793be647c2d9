"""The encoder behind the tf.data service, on loopback: a dispatcher and two workers in this process, and a worker
process with TensorFlow only."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
from rpn_tf.data import service

NUM_EXAMPLES = 40


@pytest.fixture(scope="module")
def cluster():
    dispatcher = service.start_dispatcher()
    workers = []
    try:
        workers = [service.start_worker(dispatcher.target) for _ in range(2)]
        yield dispatcher.target
    finally:  # in-process servers have no public stop; _stop() ends their threads and frees the ports
        for server in workers + [dispatcher]:
            server._stop()


def examples():
    rng = np.random.default_rng(4)
    images = rng.integers(0, 255, (NUM_EXAMPLES, 48, 48, 3), dtype=np.uint8)
    top_left = rng.uniform(0, 30, (NUM_EXAMPLES, 2, 2))
    boxes = np.concatenate([top_left, top_left + rng.uniform(8, 16, (NUM_EXAMPLES, 2, 2))], -1).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((images, boxes))


def encoded(dataset):
    """``{GT bytes: (labels, deltas)}`` and the number of elements (the GT boxes identify an example)."""
    result, count = {}, 0
    for _, targets in dataset:
        key = targets["gt_boxes"].numpy().tobytes()
        result.setdefault(key, []).append((targets["rpn_labels"].numpy(), targets["rpn_deltas"].numpy()))
        count += 1
    return result, count


def encoder():
    return rpn_tf.RpnTargetEncoder((48, 48), rpn_tf.AnchorConfig(stride=8, scales=(1.0, 2.0)), seed=0)


def test_distributed_epoch_delivers_every_example_once_with_the_local_targets(cluster):
    local, _ = encoded(examples().map(encoder()))
    remote, count = encoded(service.distribute(examples().map(encoder()), cluster, "distributed_epoch"))
    assert count == NUM_EXAMPLES and sorted(remote) == sorted(local)
    for key, [(labels, deltas)] in remote.items():
        np.testing.assert_array_equal(labels, local[key][0][0])
        np.testing.assert_array_equal(deltas, local[key][0][1])


def test_parallel_epochs_give_the_whole_dataset_from_every_worker(cluster):
    local, _ = encoded(examples().map(encoder()))
    remote, count = encoded(service.distribute(examples().map(encoder()), cluster, "parallel_epochs"))
    assert count == 2 * NUM_EXAMPLES and all(len(copies) == 2 for copies in remote.values())
    for key, copies in remote.items():
        for labels, _ in copies:
            np.testing.assert_array_equal(labels, local[key][0][0])


def test_bad_service_arguments_are_named():
    with pytest.raises(ValueError, match="grpc://HOST:PORT"):
        service.distribute(examples(), "localhost:5000")
    with pytest.raises(ValueError, match="processing_mode"):
        service.distribute(examples(), "grpc://localhost:5000", "sometimes")


WORKER = """
import sys
import tensorflow as tf
config = tf.data.experimental.service.WorkerConfig(dispatcher_address=sys.argv[1], port=0)
server = tf.data.experimental.service.WorkerServer(config)
print("READY", "rpn_tf" in sys.modules, flush=True)
server.join()
"""


def test_a_worker_with_tensorflow_only_serves_the_default_encoders_dataset(tmp_path):
    """The default encoder's graph holds core TensorFlow ops only: a plain TensorFlow worker (no rpn_tf imported,
    no native ops registered) runs it and gives the local targets."""
    dispatcher = service.start_dispatcher()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, dispatcher.target.split("://", 1)[1]], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert worker.stdout.readline().split() == ["READY", "False"]
        local, _ = encoded(examples().map(encoder()))
        remote, count = encoded(service.distribute(examples().map(encoder()), dispatcher.target,
                                                   "distributed_epoch"))
        assert count == NUM_EXAMPLES and sorted(remote) == sorted(local)
        for key, [(labels, deltas)] in remote.items():
            np.testing.assert_array_equal(labels, local[key][0][0])
            np.testing.assert_array_equal(deltas, local[key][0][1])
    finally:
        worker.kill()
        worker.wait(timeout=60)
        dispatcher._stop()
