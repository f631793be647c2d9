"""The native target kernels (rpn_tf.ops.native) against the TensorFlow ops they replace: equal bit for bit."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
from helpers import require_native
from rpn_tf.ops import native
from rpn_tf.ops.anchors import anchor_cell_origins, generate_anchors
from rpn_tf.ops.targets import RpnTargetAssigner

REPOSITORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


@pytest.fixture(autouse=True)
def _native():
    require_native()


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
def test_native_targets_equal_the_tensorflow_ops(overrides):
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


def test_native_path_in_a_dataset_map_equals_the_tensorflow_path_with_multilevel_anchors():
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


def test_the_encoder_transform_uses_the_native_ops_by_default_and_encode_does_not():
    encoder = rpn_tf.RpnTargetEncoder((128, 128), seed=0)
    traced = tf.function(lambda image, boxes: encoder(image, boxes)).get_concrete_function(
        tf.TensorSpec([128, 128, 3], tf.uint8), tf.TensorSpec([None, 4], tf.float32))
    op_types = {op.type for op in traced.graph.get_operations()}
    assert {"RpnTfLabelAndSample", "RpnTfDenseTargets"} <= op_types
    traced = tf.function(encoder.encode).get_concrete_function(tf.TensorSpec([2, None, 4], tf.float32))
    assert not {op.type for op in traced.graph.get_operations()} & {"RpnTfLabelAndSample", "RpnTfDenseTargets"}
    tf_only = rpn_tf.RpnTargetEncoder((128, 128), seed=0, implementation="tf")
    traced = tf.function(lambda image, boxes: tf_only(image, boxes)).get_concrete_function(
        tf.TensorSpec([128, 128, 3], tf.uint8), tf.TensorSpec([None, 4], tf.float32))
    assert "RpnTfLabelAndSample" not in {op.type for op in traced.graph.get_operations()}


def test_the_kernels_reject_malformed_inputs_with_a_clear_error():
    module = native.load()
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


def test_switched_off_native_ops_fall_back_to_the_same_targets_and_native_is_refused():
    code = """
import numpy as np, tensorflow as tf, rpn_tf
from rpn_tf.ops import native
assert native.load() is None and "RPN_TF_NATIVE" in native.unavailable_reason()
boxes = np.array([[10, 10, 90, 120]], np.float32)
_, targets = rpn_tf.RpnTargetEncoder((128, 128), seed=0)(tf.zeros([128, 128, 3], tf.uint8), boxes)
print(int(targets["rpn_labels"].numpy().sum()))
try:
    rpn_tf.RpnTargetEncoder((128, 128), implementation="native")(tf.zeros([128, 128, 3], tf.uint8), boxes)
except RuntimeError as error:
    print("refused:", error)
"""
    result = run_python(code, RPN_TF_NATIVE="0")
    assert result.returncode == 0, result.stderr
    total, refused = result.stdout.strip().splitlines()[-2:]
    boxes = np.array([[10, 10, 90, 120]], np.float32)
    _, targets = rpn_tf.RpnTargetEncoder((128, 128), seed=0)(tf.zeros([128, 128, 3], tf.uint8), boxes)
    assert int(total) == int(targets["rpn_labels"].numpy().sum())
    assert "implementation='native'" in refused and "RPN_TF_NATIVE=0" in refused


def test_a_failed_build_names_the_compiler_error_and_leaves_no_library(tmp_path):
    code = f"""
from rpn_tf.ops import native
native.SOURCE = {str(tmp_path / 'broken.cc')!r}
open(native.SOURCE, "w").write("this is not C++")
try:
    native.build({str(tmp_path / 'lib.so')!r})
except RuntimeError as error:
    print("error:", str(error).splitlines()[0])
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "compiling" in result.stdout and "failed" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.cc"]  # no library, no temporary left


def test_the_library_is_built_into_the_cache_directory_and_loads(tmp_path):
    code = """
from rpn_tf.ops import native
import os
module = native.load()
print(module is not None, os.path.dirname(native.library_path()), os.listdir(native.cache_dir()))
"""
    result = run_python(code, RPN_TF_CACHE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    loaded, directory, listing = result.stdout.strip().splitlines()[-1].split(" ", 2)
    assert loaded == "True" and directory == str(tmp_path)
    assert [name for name in os.listdir(tmp_path) if name.endswith(".so")] == [os.path.basename(
        run_python("from rpn_tf.ops import native; print(native.library_path())",
                   RPN_TF_CACHE_DIR=str(tmp_path)).stdout.strip().splitlines()[-1])]


def test_a_build_killed_midway_leaves_no_library_and_the_next_load_builds_it(tmp_path):
    code = "from rpn_tf.ops import native; print('building', flush=True); native.build()"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "RPN_TF_CACHE_DIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPOSITORY, env=env, stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "building"
        import time

        time.sleep(2.0)  # the compiler is running
        os.killpg(process.pid, 9)  # the Python process and its compiler
    finally:
        process.wait(timeout=60)
    assert not [name for name in os.listdir(tmp_path) if name.startswith("rpn_tf_native_")]
    result = run_python("from rpn_tf.ops import native; print(native.load() is not None)",
                        RPN_TF_CACHE_DIR=str(tmp_path))
    assert result.stdout.strip().splitlines()[-1] == "True", result.stderr
