"""Faults during export: a real SIGKILL at several moments never leaves a numeric version folder that TF Serving
would load half-written."""

import os
import signal
import subprocess
import sys
import time

import keras
import pytest

import rpn_tf
from rpn_tf.serving import WARMUP_FILE, export_saved_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPORT_LOOP = """
import sys
from rpn_tf.serving import export_saved_model, load_model
model = load_model(sys.argv[1])
print("ready", flush=True)
while True:
    export_saved_model(model, sys.argv[2], "rpn")
"""


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = rpn_tf.RPNModel((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)), backbone="simple",
                            head_channels=8)
    path = str(tmp_path_factory.mktemp("model") / "rpn.keras")
    model.save(path)
    return path


def complete_versions(model_dir):
    """Numeric folders; each must hold a SavedModel and its warmup records."""
    versions = sorted(name for name in os.listdir(model_dir) if name.isdigit()) if os.path.isdir(model_dir) else []
    for version in versions:
        folder = os.path.join(model_dir, version)
        assert os.path.exists(os.path.join(folder, "saved_model.pb")), f"{folder} has no saved_model.pb"
        assert os.path.exists(os.path.join(folder, WARMUP_FILE)), f"{folder} has no warmup records"
        assert os.path.isdir(os.path.join(folder, "variables")), f"{folder} has no variables/"
    return versions


def test_sigkill_at_any_moment_leaves_only_complete_versions(keras_file, tmp_path):
    base = tmp_path / "serving"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT}
    for delay in (0.5, 1.5, 3.0):  # after the model is loaded: early, mid and late in an export (each ~1-2 s)
        process = subprocess.Popen([sys.executable, "-c", EXPORT_LOOP, keras_file, str(base)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert process.stdout.readline().strip() == "ready"
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        complete_versions(base / "rpn")
    # The next export cleans up what the killed ones left and adds a complete version.
    path = export_saved_model(keras_file, str(base), "rpn")
    assert os.path.basename(path) in complete_versions(base / "rpn")
    assert not [name for name in os.listdir(base / "rpn") if not name.isdigit()]


def test_two_exports_started_together_into_one_base_dir_give_two_complete_versions(keras_file, tmp_path):
    base = tmp_path / "serving"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    script = os.path.join(os.path.dirname(sys.executable), "rpn-tf")  # the installed command
    processes = [subprocess.Popen([script, "export", keras_file, "--base-dir", str(base)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [process.communicate(timeout=300) + (process.returncode,) for process in processes]
    assert [code for _, _, code in results] == [0, 0], results
    assert "Traceback" not in "".join(err for _, err, _ in results)
    assert complete_versions(base / "rpn") == ["1", "2"]
    assert not [name for name in os.listdir(base / "rpn") if not name.isdigit()]  # no leftovers


def test_a_version_taken_by_another_export_meanwhile(keras_file, tmp_path, monkeypatch):
    """The race made deterministic: another export publishes the chosen version while this one writes."""
    from rpn_tf.serving import exporter

    model_dir = tmp_path / "serving" / "rpn"
    write_warmup_records = exporter.write_warmup_records

    def racing_write(directory, requests):  # the last step before publishing
        write_warmup_records(directory, requests)
        taken = type(tmp_path)(directory).parent / "1"
        if not taken.exists():
            taken.mkdir()
            (taken / "saved_model.pb").write_bytes(b"the other export's")

    monkeypatch.setattr(exporter, "write_warmup_records", racing_write)
    path = export_saved_model(keras_file, str(tmp_path / "serving"), "rpn")
    assert os.path.basename(path) == "2" and (model_dir / "2" / WARMUP_FILE).exists()
    assert (model_dir / "1" / "saved_model.pb").read_bytes() == b"the other export's"  # untouched
    with pytest.raises(FileExistsError, match="written by another export"):
        export_saved_model(keras_file, str(tmp_path / "other"), "rpn", version=1)
    assert sorted(os.listdir(tmp_path / "other" / "rpn")) == ["1"]  # the other's version only, no leftovers
