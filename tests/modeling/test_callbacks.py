"""Training that survives faults: a real SIGKILL during training (and so, at some point, during a backup write)
never stops the next run from resuming; an unreadable backup falls back to the previous one in one line."""

import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np

import rpn_tf
from rpn_tf.modeling.callbacks import AtomicCheckpoint, CrashSafeBackup, save_atomically

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = ["-m", "rpn_tf.tools.cli", "train", "--preset", "deepforest", "--data", "OSBS_029", "--tile", "128",
         "--tile-overlap", "0", "--image-size", "128", "128", "--stride", "8", "--head-channels", "8",
         "--batch-size", "4", "--epochs", "40"]


def backups(out):
    folder = out / "backup"
    complete = re.compile(r"^epoch-\d+\.weights\.h5$")  # not the temporary file being written
    return [name for name in os.listdir(folder) if complete.match(name)] if folder.is_dir() else []


def small_model():
    return rpn_tf.RPNModel((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(1.0,)), backbone="simple",
                           head_channels=8)


def test_unreadable_newest_backup_falls_back_to_the_previous(tmp_path):
    model = small_model()
    messages = []
    backup = CrashSafeBackup(tmp_path / "backup", log=messages.append)
    assert backup.restore(model) == 0 and messages == []
    (tmp_path / "backup").mkdir()
    model.save_weights(str(tmp_path / "backup" / "epoch-2.weights.h5"))
    (tmp_path / "backup" / "epoch-3.weights.h5").write_bytes(b"\x89HDF\r\n truncated")
    restored = small_model()
    assert backup.restore(restored) == 2
    assert any("epoch-3.weights.h5 is unreadable" in m for m in messages) and "resuming from epoch 2" in messages[-1]
    np.testing.assert_allclose(restored.get_weights()[0], model.get_weights()[0])


def test_atomic_checkpoint_keeps_the_best_and_never_leaves_temporaries(tmp_path):
    model = small_model()
    checkpoint = AtomicCheckpoint(tmp_path / "best.keras", monitor="val_score")
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"val_score": 0.5})
    first = os.path.getmtime(tmp_path / "best.keras")
    time.sleep(0.01)
    checkpoint.on_epoch_end(1, {"val_score": 0.4})  # worse: not saved
    assert os.path.getmtime(tmp_path / "best.keras") == first and checkpoint.best == 0.5
    checkpoint.on_epoch_end(2, {"val_score": 0.6})
    assert checkpoint.best == 0.6 and sorted(os.listdir(tmp_path)) == ["best.keras", "best.keras.best.json"]
    # A resumed run (a new callback on the same path) keeps the best so far: a worse value saves nothing.
    assert AtomicCheckpoint(tmp_path / "best.keras", monitor="val_score").best is None  # a new run starts afresh
    resumed = AtomicCheckpoint(tmp_path / "best.keras", monitor="val_score", resume=True)
    resumed.set_model(model)
    saved = os.path.getmtime(tmp_path / "best.keras")
    resumed.on_epoch_end(3, {"val_score": 0.55})
    assert resumed.best == 0.6 and os.path.getmtime(tmp_path / "best.keras") == saved
    assert isinstance(keras.models.load_model(save_atomically(model, str(tmp_path / "m.keras"))), rpn_tf.RPNModel)


def test_sigkill_during_training_then_resume(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    for delay in (0.0, 0.7):  # right when a backup appears, and a bit later (within the next ones)
        process = subprocess.Popen([sys.executable, *TRAIN, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 120
            while not backups(out):
                assert process.poll() is None and time.time() < deadline, "no backup was written"
                time.sleep(0.05)
            time.sleep(delay)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
    result = subprocess.run([sys.executable, *TRAIN, "--out", str(out)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from epoch" in result.stdout and "Traceback" not in result.stderr
    assert (out / "model.keras").exists() and not backups(out)  # a finished run removes its backups


def test_ctrl_c_or_sigterm_during_training_end_in_one_line_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    for sent, status, name in ((signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")):
        process = subprocess.Popen([sys.executable, *TRAIN, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 120
            count = len(backups(out))
            while len(backups(out)) <= count:
                assert process.poll() is None and time.time() < deadline, "no backup was written"
                time.sleep(0.05)
            process.send_signal(sent)
            _, stderr = process.communicate(timeout=30)  # ends within seconds
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == status, stderr[-2000:]
        assert "Traceback" not in stderr
        lines = [line for line in stderr.splitlines() if "interrupted" in line]
        assert lines == [f"interrupted by {name} during train: the last finished epoch is kept in {out} (backup/ or "
                         "checkpoints/, and checkpoint.keras): run the same command again to resume from it"]
    result = subprocess.run([sys.executable, *TRAIN, "--out", str(out)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "resuming from epoch" in result.stdout, result.stderr[-2000:]
