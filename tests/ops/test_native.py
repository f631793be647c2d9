"""The native target kernels (rpn_tf.ops.native): an opt-in equal bit for bit to the TensorFlow ops, built once per
machine and cache; the default path never looks for a compiler."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
from helpers import require_native
from rpn_tf.ops import native
from rpn_tf.ops.anchors import anchor_cell_origins, generate_anchors
from rpn_tf.ops.targets import RpnTargetAssigner

REPOSITORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


@pytest.fixture
def built():
    """The native ops, built into the default cache (skips where no compiler exists)."""
    require_native()
    return native.load()


def assigners(image_size, anchor_config, **overrides):
    anchors = generate_anchors(image_size, anchor_config).numpy()
    origins = anchor_cell_origins(image_size, anchor_config)
    config = rpn_tf.TargetConfig(**overrides)
    return RpnTargetAssigner(anchors, image_size, config, origins), anchors


def gt_batch(rng, batch, count, image_size, anchors):
    """Padded GT ``[B, count, 4]``: random boxes of many sizes (sub-pixel to larger than the image), exact copies of
    anchors (ties), duplicates, boxes on the border and padding rows."""
    height, width = image_size
    boxes = np.full((batch, count, 4), -1.0, np.float32)
    for b in range(batch):
        real = rng.integers(0, count + 1)
        for g in range(real):
            kind = rng.integers(0, 5)
            if kind == 0:  # an anchor, clipped to the image
                box = anchors[rng.integers(len(anchors))].copy()
            elif kind == 1 and g > 0:  # a duplicate
                box = boxes[b, rng.integers(g)].copy()
            else:
                size = rng.choice([0.3, 4.0, 40.0, 200.0, 2000.0]) * rng.uniform(0.5, 1.5, 2)
                top_left = rng.uniform(-20, max(height, width), 2)
                box = np.concatenate([top_left, top_left + size])
            box = np.clip(box, 0, [height, width, height, width])
            if box[2] <= box[0] or box[3] <= box[1]:
                box = np.array([1, 1, 9, 9], np.float32)
            boxes[b, g] = box
    return boxes


def assert_same(tf_out, native_out):
    assert sorted(tf_out) == sorted(native_out)
    for key in tf_out:
        assert tf_out[key].shape == native_out[key].shape, key
        np.testing.assert_array_equal(tf_out[key].numpy(), native_out[key].numpy(), err_msg=key)


CONFIGS = [
    dict(),
    dict(allowed_border=-1.0),
    dict(allowed_border=8.0, positive_iou=0.5, negative_iou=0.5),
    dict(sampling="none"),
    dict(positive_fraction=0.0),
    dict(positive_fraction=1.0, samples_per_image=64),
    dict(samples_per_image=4000, min_gt_size=12.0),
    dict(target_format="sparse"),
    dict(target_format="sparse", allowed_border=-1.0, samples_per_image=32),
]


@pytest.mark.parametrize("overrides", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_native_targets_equal_the_tensorflow_ops(overrides, built):
    image_size = (192, 256)
    anchor_config = rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0, 8.0), ratios=(0.5, 1.0, 2.0))
    assigner, anchors = assigners(image_size, anchor_config, **overrides)
    target_format = overrides.get("target_format", "dense")
    rng = np.random.default_rng(len(str(overrides)))
    for trial in range(6):
        batch = [1, 3][trial % 2]
        boxes = tf.constant(gt_batch(rng, batch, [0, 1, 7, 25][trial % 4], image_size, anchors))
        seeds = tf.constant(rng.integers(0, 2**31, (batch, 2)), tf.int64)
        for sizes in (None, np.array([[192, 256], [100, 256], [192, 48]][:batch], np.float32)):
            if sizes is not None and overrides.get("allowed_border") == 8.0:
                sizes = sizes + 0.5  # off-grid sizes with a border
            expected = assigner(boxes, seeds, sizes, target_format)
            actual = assigner(boxes, seeds, sizes, target_format, native=True)
            assert_same(expected, actual)


def test_native_path_in_a_dataset_map_equals_the_tensorflow_path_with_multilevel_anchors(built):
    image_size = (256, 256)
    anchor_config = rpn_tf.MultiLevelAnchorConfig.fpn()
    rng = np.random.default_rng(3)
    images = [np.zeros((int(h), int(w), 3), np.uint8) for h, w in rng.integers(100, 400, (6, 2))]
    boxes = [gt_batch(rng, 1, 9, image.shape[:2], np.zeros((1, 4), np.float32))[0] for image in images]
    boxes = [b[b[:, 0] >= 0] for b in boxes]
    results = {}
    for implementation in ("tf", "native"):
        encoder = rpn_tf.RpnTargetEncoder(image_size, anchor_config, seed=11, implementation=implementation)
        dataset = tf.data.Dataset.from_generator(
            lambda: zip(images, boxes), output_signature=(tf.TensorSpec([None, None, 3], tf.uint8),
                                                          tf.TensorSpec([None, 4], tf.float32)))
        results[implementation] = [targets for _, targets in dataset.map(encoder)]
    for tf_targets, native_targets in zip(results["tf"], results["native"]):
        assert_same(tf_targets, native_targets)


NATIVE_OPS = {"RpnTfLabelAndSample", "RpnTfDenseTargets", "RpnTfSparseTargets"}


def traced_op_types(encoder):
    traced = tf.function(lambda image, boxes: encoder(image, boxes)).get_concrete_function(
        tf.TensorSpec([128, 128, 3], tf.uint8), tf.TensorSpec([None, 4], tf.float32))
    return {op.type for op in traced.graph.get_operations()}


def test_the_encoder_uses_the_native_ops_only_when_asked(built):
    assert not traced_op_types(rpn_tf.RpnTargetEncoder((128, 128), seed=0)) & NATIVE_OPS  # the default
    assert {"RpnTfLabelAndSample", "RpnTfDenseTargets"} <= traced_op_types(
        rpn_tf.RpnTargetEncoder((128, 128), seed=0, implementation="native"))
    native.enable()
    try:  # the process-wide switch: "auto" encoders use them in the transform, encode keeps the TensorFlow ops
        encoder = rpn_tf.RpnTargetEncoder((128, 128), seed=0)
        assert {"RpnTfLabelAndSample", "RpnTfDenseTargets"} <= traced_op_types(encoder)
        traced = tf.function(encoder.encode).get_concrete_function(tf.TensorSpec([2, None, 4], tf.float32))
        assert not {op.type for op in traced.graph.get_operations()} & NATIVE_OPS
        assert not traced_op_types(rpn_tf.RpnTargetEncoder((128, 128), seed=0, implementation="tf")) & NATIVE_OPS
    finally:
        native.enable(None)
    assert not traced_op_types(rpn_tf.RpnTargetEncoder((128, 128), seed=0)) & NATIVE_OPS


def test_the_kernels_reject_malformed_inputs_with_a_clear_error(built):
    module = built
    anchors = tf.constant([[0, 0, 16, 16]], tf.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="gt_boxes must be"):
        module.rpn_tf_label_and_sample(tf.zeros([1, 2, 3]), tf.zeros([0, 2]), tf.zeros([1, 2], tf.int64), anchors,
                                       anchors[:, 2:], positive_iou=0.7, negative_iou=0.3, min_gt_size=1.0,
                                       tie_factor=1.0, num_samples=0, max_positives=0, region_border=0.0,
                                       region_strict=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="seeds must be"):
        module.rpn_tf_label_and_sample(tf.zeros([1, 2, 4]), tf.zeros([0, 2]), tf.zeros([1, 5], tf.int64), anchors,
                                       anchors[:, 2:], positive_iou=0.7, negative_iou=0.3, min_gt_size=1.0,
                                       tie_factor=1.0, num_samples=8, max_positives=4, region_border=0.0,
                                       region_strict=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="out of range"):
        module.rpn_tf_dense_targets(tf.zeros([1, 1], tf.int32), tf.constant([[3]]), tf.constant([0]),
                                    tf.zeros([1, 4]), tf.ones([1, 4]), tf.zeros([1, 2, 4]))


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})


def fake_compiler(tmp_path):
    """A compiler that answers ``--version``, then fails every build with an error message, counting its calls."""
    script = tmp_path / "fakecc"
    script.write_text(f"""#!/bin/sh
if [ "$1" = "--version" ]; then echo "fakecc 1.0"; exit 0; fi
echo build >> {tmp_path / 'calls.txt'}
echo "fakecc: error: PacketMathFP16.h:740: expected initializer before '<' token" >&2
exit 1
""")
    script.chmod(0o755)
    return str(script)


COMPILER_WORDS = ("compil", "c++", "g++", "fakecc", "/bin/false", "native", "PacketMath")

ENCODE_DEFAULT = """
import numpy as np, tensorflow as tf, rpn_tf
boxes = np.array([[10, 10, 90, 120]], np.float32)
dataset = tf.data.Dataset.from_tensors((tf.zeros([96, 128, 3], tf.uint8), boxes)).repeat(3)
encoder = rpn_tf.RpnTargetEncoder((128, 128), seed=0)
totals = [int(t["rpn_labels"].numpy().sum()) for _, t in dataset.map(encoder)]
graph = tf.compat.v1.GraphDef.FromString(dataset.map(encoder)._as_serialized_graph().numpy())
ops = {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}
from tensorflow.python.framework import op_def_registry
unknown = sorted(op for op in ops if op_def_registry.get(op) is None or op.startswith("RpnTf"))
print("RESULT", totals[0], len(ops), unknown)
"""


@pytest.mark.parametrize("cxx", ["/bin/false", "fake"])
def test_the_default_path_holds_only_core_ops_and_looks_for_no_compiler(tmp_path, cxx):
    cxx = fake_compiler(tmp_path) if cxx == "fake" else cxx
    cache = tmp_path / "cache"
    result = run_python(ENCODE_DEFAULT, CXX=cxx, RPN_TF_CACHE_DIR=str(cache))
    assert result.returncode == 0, result.stderr
    _, total, count, unknown = result.stdout.strip().splitlines()[-1].split(" ", 3)
    assert unknown == "[]" and int(count) > 10  # every op of the dataset's graph is a core TensorFlow op
    assert not cache.exists() and not (tmp_path / "calls.txt").exists()  # no compiler run, nothing cached
    printed = (result.stdout.rsplit("RESULT", 1)[0] + result.stderr).lower()
    assert not [word for word in COMPILER_WORDS if word.lower() in printed], printed
    boxes = np.array([[10, 10, 90, 120]], np.float32)
    _, targets = rpn_tf.RpnTargetEncoder((128, 128), seed=0)(tf.zeros([96, 128, 3], tf.uint8), boxes)
    assert int(total) == int(targets["rpn_labels"].numpy().sum())


OPT_IN = """
import numpy as np, tensorflow as tf, rpn_tf
try:
    rpn_tf.RpnTargetEncoder((128, 128), implementation="native")(tf.zeros([128, 128, 3], tf.uint8),
                                                                    np.array([[10, 10, 90, 120]], np.float32))
    print("NO ERROR")
except RuntimeError as error:
    print("ERROR", str(error).replace(chr(10), "<newline>"))
"""


def test_a_failing_compiler_gives_the_opt_in_a_one_line_error_remembered_across_processes(tmp_path):
    cxx, cache = fake_compiler(tmp_path), tmp_path / "cache"
    first = run_python(OPT_IN, CXX=cxx, RPN_TF_CACHE_DIR=str(cache))
    assert first.returncode == 0, first.stderr
    line = first.stdout.strip().splitlines()[-1]
    assert line.startswith("ERROR rpn-tf native target ops unavailable: compiling rpn_targets.cc with fakecc "
                           "failed (exit status 1; compiler output in") and "<newline>" not in line
    # The compiler's output went to the log in the cache, not to the terminal.
    assert "PacketMath" not in first.stdout + first.stderr
    logs = list(cache.glob("*.log"))
    assert len(logs) == 1 and "expected initializer" in logs[0].read_text()
    assert not list(cache.glob("*.so")) and len(list(cache.glob("*.failed"))) == 1
    assert (tmp_path / "calls.txt").read_text().count("build") == 1
    # A later process does not retry: it says so in one line.
    second = run_python(OPT_IN, CXX=cxx, RPN_TF_CACHE_DIR=str(cache))
    line = second.stdout.strip().splitlines()[-1]
    assert "remembered from an earlier attempt" in line and "rpn-tf native build --force" in line
    assert (tmp_path / "calls.txt").read_text().count("build") == 1
    assert "PacketMath" not in second.stdout + second.stderr


def test_the_native_command_reports_builds_and_retries(tmp_path):
    cxx, cache = fake_compiler(tmp_path), tmp_path / "cache"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CXX": cxx, "RPN_TF_CACHE_DIR": str(cache)}

    def cli(*args):
        script = os.path.join(os.path.dirname(sys.executable), "rpn-tf")  # the installed command
        return subprocess.run([script, "native", *args], cwd=REPOSITORY,
                              capture_output=True, text=True, timeout=300, env=env)

    status = cli("status")
    assert status.returncode == 0 and "state: not built" in status.stdout and "fakecc 1.0" in status.stdout
    assert "-mavx2" in status.stdout or "flags: -shared" in status.stdout
    failed = cli("build")
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "failed" in failed.stderr
    assert "state: failed: compiling" in cli("status").stdout
    again = cli("build")  # remembered: no second compiler run
    assert again.returncode == 2 and "remembered" in again.stderr
    assert (tmp_path / "calls.txt").read_text().count("build") == 1
    forced = cli("build", "--force")
    assert forced.returncode == 2 and (tmp_path / "calls.txt").read_text().count("build") == 2


def test_a_broken_source_names_the_compiler_error_in_the_log_and_leaves_no_library(tmp_path):
    if native.compiler() is None:
        pytest.skip("no C++ compiler")
    code = f"""
from rpn_tf.ops import native
native.SOURCE = {str(tmp_path / 'broken.cc')!r}
open(native.SOURCE, "w").write("this is not C++")
try:
    native.build()
except native.NativeUnavailable as error:
    print("error:", str(error))
"""
    result = run_python(code, RPN_TF_CACHE_DIR=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    assert "compiling broken.cc with" in result.stdout and "failed" in result.stdout
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert [n.rsplit(".", 1)[1] for n in names] == ["failed", "lock", "log"]  # no library, no temporary left
    assert "error" in next((tmp_path / "cache").glob("*.log")).read_text()


BUILD_AND_LOAD = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout)
from rpn_tf.ops import native
print("LOADED", native.load() is not None, native.library_path(), flush=True)
"""


def test_two_processes_building_at_once_build_once_and_leave_one_library(tmp_path):
    require_native()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "RPN_TF_CACHE_DIR": str(tmp_path)}
    processes = [subprocess.Popen([sys.executable, "-c", BUILD_AND_LOAD], cwd=REPOSITORY, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert sum(output.count("building the native target-encoding ops") for output in outputs) == 1
    loaded = [line.split() for output in outputs for line in output.splitlines() if line.startswith("LOADED")]
    assert [flag for _, flag, _ in loaded] == ["True", "True"] and loaded[0][2] == loaded[1][2]
    assert [p.name for p in tmp_path.glob("*.so")] == [os.path.basename(loaded[0][2])]
    assert not list(tmp_path.glob(".build-*"))
    meta = json.loads(tmp_path.joinpath(os.path.basename(loaded[0][2])[:-3] + ".json").read_text())
    assert meta["tensorflow"] == tf.__version__ and "-march=native" not in meta["flags"]


def test_a_build_killed_midway_leaves_no_library_and_the_next_load_builds_it(tmp_path):
    require_native()
    code = "from rpn_tf.ops import native; print('building', flush=True); native.build()"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "RPN_TF_CACHE_DIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPOSITORY, env=env, stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "building"
        time.sleep(2.0)  # the compiler is running
        os.killpg(process.pid, 9)  # the Python process and its compiler
    finally:
        process.wait(timeout=60)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(native.PREFIX) and
                name.endswith((".so", ".failed"))]  # only the killed build's temporary, never loaded
    result = run_python("from rpn_tf.ops import native; print(native.load() is not None)",
                        RPN_TF_CACHE_DIR=str(tmp_path))
    assert result.stdout.strip().splitlines()[-1] == "True", result.stderr


def test_clean_removes_libraries_of_other_tensorflow_versions_or_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("RPN_TF_CACHE_DIR", str(tmp_path))
    info = native.settings()
    current = native.library_path(info)

    def fake_build(name, **meta):
        path = tmp_path / f"{native.PREFIX}{name}.so"
        path.write_bytes(b"library")
        if meta:
            path.with_suffix(".json").write_text(json.dumps({**info, **meta}))
        return path

    kept = fake_build(os.path.basename(current)[len(native.PREFIX):-3], tensorflow=info["tensorflow"])
    other_compiler = fake_build("othercc", compiler="clang++ 18")  # same source and TensorFlow: still valid
    old_tf = fake_build("oldtf", tensorflow="2.15.0")
    old_source = fake_build("oldsource", source_sha256="0" * 64)
    unknown = fake_build("nometadata")
    removed = native.clean(info)
    assert sorted(removed) == sorted(str(p) for p in (old_tf, old_source, unknown))
    assert kept.exists() and other_compiler.exists() and not old_tf.with_suffix(".json").exists()
    assert native.clean(info, everything=True) and not list(tmp_path.glob("*.so"))


def test_a_compiler_killed_by_a_signal_is_not_remembered_as_a_failure(tmp_path):
    script = tmp_path / "killedcc"
    script.write_text(f"""#!/bin/sh
if [ "$1" = "--version" ]; then echo "killedcc 1.0"; exit 0; fi
echo build >> {tmp_path / 'calls.txt'}
kill -9 $$
""")
    script.chmod(0o755)
    cache = tmp_path / "cache"
    for _ in range(2):  # each process tries again: out of memory or a timeout may pass
        result = run_python(OPT_IN, CXX=str(script), RPN_TF_CACHE_DIR=str(cache))
        assert "exit status -9" in result.stdout.strip().splitlines()[-1]
    assert (tmp_path / "calls.txt").read_text().count("build") == 2 and not list(cache.glob("*.failed"))
