"""Multi-worker training on loopback: two worker processes (TF_CONFIG on 127.0.0.1) against one process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_worker.py")
TIMEOUT = 240


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start(out, strategy, epochs, tf_config=None, log=None, kind="rpn"):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, WORKER, str(out), strategy, str(epochs), kind], env=env,
                            stdout=open(log, "w") if log else subprocess.DEVNULL, stderr=subprocess.STDOUT)


def start_pair(out, epochs, kind="rpn"):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return [start(out, "multi_worker", epochs, {"cluster": cluster, "task": {"type": "worker", "index": index}},
                  os.path.join(out, f"worker{index}.log"), kind) for index in range(2)]


def stop(processes):
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def wait(processes):
    deadline = time.time() + TIMEOUT
    for process in processes:
        process.wait(timeout=max(deadline - time.time(), 1))
        assert process.returncode == 0, f"a training process exited with {process.returncode}"


def weights(out):
    data = np.load(os.path.join(out, "weights.npz"))
    return [data[key] for key in data.files]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    processes = [start(out, "default", 3, log=os.path.join(out, "log"))]
    try:
        wait(processes)
    finally:
        stop(processes)
    return out


def test_two_workers_equal_one_process_on_the_global_batch(single_run, tmp_path):
    processes = start_pair(tmp_path, 3)
    try:
        wait(processes)
    finally:
        stop(processes)
    for ours, reference in zip(weights(tmp_path), weights(single_run)):
        np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-4)  # summation order differs
    chief_log, other_log = (open(tmp_path / f"worker{i}.log").read() for i in range(2))
    assert "epoch 3/3" in chief_log and "epoch" not in other_log  # progress on the chief only
    # Only the chief keeps checkpoints; the other worker's throw-away copies are gone.
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["checkpoint", "ckpt-2.data-00000-of-00001",
                                                            "ckpt-2.index", "ckpt-3.data-00000-of-00001",
                                                            "ckpt-3.index"]


def test_two_workers_train_the_detector(tmp_path):
    """FasterRCNN under MultiWorkerMirroredStrategy (the TensorFlow-native loop: Keras 3's fit fails there): both
    stages train on two loopback workers, the chief alone reports and writes the weights."""
    processes = start_pair(tmp_path, 2, kind="detector")
    try:
        wait(processes)
    finally:
        stop(processes)
    chief_log, other_log = (open(tmp_path / f"worker{i}.log").read() for i in range(2))
    assert "epoch 2/2" in chief_log and "roi_classification_loss" in chief_log and "epoch" not in other_log
    final_loss = float(chief_log.split("final loss")[1].split()[0])
    assert np.isfinite(final_loss) and all(np.isfinite(w).all() for w in weights(tmp_path))


def test_a_killed_pair_resumes_from_its_checkpoint(single_run, tmp_path):
    processes = start_pair(tmp_path, 3)
    try:
        deadline = time.time() + TIMEOUT
        while not os.path.exists(tmp_path / "checkpoints" / "checkpoint") and time.time() < deadline:
            assert all(p.poll() is None for p in processes), "a worker ended before its first checkpoint"
            time.sleep(0.05)
        for process in processes:
            process.send_signal(signal.SIGKILL)
    finally:
        stop(processes)
    assert not os.path.exists(tmp_path / "weights.npz")
    processes = start_pair(tmp_path, 3)
    try:
        wait(processes)
    finally:
        stop(processes)
    log = open(tmp_path / "worker0.log").read()
    assert "resuming from epoch" in log
    for ours, reference in zip(weights(tmp_path), weights(single_run)):
        np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-4)  # summation order differs


def test_rpn_tf_train_strategy_multi_worker(tmp_path):
    """The CLI path: two `rpn-tf train --strategy multi_worker --val-data` processes; the chief alone saves the
    model and the best checkpoint by validation recall."""
    script = os.path.join(os.path.dirname(sys.executable), "rpn-tf")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "rpn_tf.tools.cli"]
    argv = [*command, "train", "--preset", "deepforest", "--data", "OSBS_029", "--tile", "200", "--tile-overlap",
            "50", "--image-size", "200", "200", "--head-channels", "8", "--epochs", "2", "--batch-size", "2",
            "--strategy", "multi_worker", "--out", str(tmp_path / "run"), "--val-data", "OSBS_029"]
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    try:
        for index in range(2):
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
            processes.append(subprocess.Popen(argv, env=env, stdout=open(tmp_path / f"log{index}", "w"),
                                              stderr=subprocess.STDOUT))
        wait(processes)
    finally:
        stop(processes)
    chief, other = (open(tmp_path / f"log{index}").read() for index in range(2))
    assert "epoch 2/2" in chief and "saved" in chief and "epoch" not in other and "saved" not in other
    assert "val_recall@300_iou0.5" in chief and "val_loss" in chief  # --val-data with the TensorFlow-native loop
    assert (tmp_path / "run" / "model.keras").exists()
    assert (tmp_path / "run" / "checkpoint.keras").exists()  # the best model by validation recall, chief only
    assert json.load(open(tmp_path / "run" / "checkpoint.keras.best.json"))["monitor"] == "val_recall@300_iou0.5"
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints"))[0] == "checkpoint"
