"""The torchvision converter as a user meets it: one error naming every misfit and nothing loaded; torchvision's old
names; K from the checkpoint; the RPN alone; the ``rpn-tf convert`` command on a .safetensors file, its .keras file
giving the converted model's detections, fine-tuning with frozen batch norm and torchvision's trainable stages, and
``rpn-tf train --init`` with another class count."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from torchvision_parity import seeded_state_dict  # noqa: E402

import keras  # noqa: E402
import rpn_tf  # noqa: E402
from rpn_tf.interop import torchvision as tv  # noqa: E402

SMALL = (256, 256)  # a small training canvas keeps fine-tuning cheap here


@pytest.fixture(scope="module")
def weights():
    return seeded_state_dict(7, num_classes=5)  # K = 4


def test_misfits_are_named_in_one_error_and_nothing_is_loaded(weights):
    model = tv.torchvision_faster_rcnn(4, rpn=tv.torchvision_rpn(SMALL), )
    plan = tv._backbone_plan(model.rpn.backbone) + tv._rpn_plan(model.rpn) + tv._roi_heads_plan(model.roi_heads)
    before = [np.array(variable) for variable, _, _ in plan]
    broken = dict(weights)
    del broken["backbone.body.layer3.2.conv2.weight"]
    broken["roi_heads.mask_head.weight"] = np.zeros(3, np.float32)
    broken["rpn.head.cls_logits.weight"] = np.zeros((5, 256, 1, 1), np.float32)
    with pytest.raises(ValueError) as raised:
        tv.load_torchvision_weights(plan, tv.read_torchvision_state_dict(broken), "the test model")
    message = str(raised.value)
    assert "missing (1): backbone.body.layer3.2.conv2.weight" in message
    assert "unknown (1): roi_heads.mask_head.weight" in message
    assert "rpn.head.cls_logits.weight: shape (5, 256, 1, 1)" in message
    for (variable, _, _), value in zip(plan, before):
        np.testing.assert_array_equal(np.array(variable), value)  # nothing loaded half


def test_old_names_classes_from_the_checkpoint_and_the_rpn_alone(weights):
    old = dict(weights)
    for new_name, old_name in (("rpn.head.conv.0.0.weight", "rpn.head.conv.weight"),
                               ("backbone.fpn.inner_blocks.2.0.bias", "backbone.fpn.inner_blocks.2.bias")):
        old[old_name] = old.pop(new_name)
    model = rpn_tf.FasterRCNN.from_torchvision(old, image_size=SMALL)
    assert model.num_classes == 4 and model.roi_heads.level_mapper == "torchvision"
    np.testing.assert_array_equal(np.array(model.rpn.head.conv.kernel),
                                  np.transpose(weights["rpn.head.conv.0.0.weight"], (2, 3, 1, 0)))
    epsilons = {layer.epsilon for layer in model.rpn.backbone.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert epsilons == {1e-5}  # BatchNorm2d checkpoints (num_batches_tracked present): torchvision's ε
    frozen = {name: value for name, value in weights.items() if not name.endswith("num_batches_tracked")}
    assert {layer.epsilon for layer in rpn_tf.RPNModel.from_torchvision(frozen, image_size=SMALL).backbone.layers
            if isinstance(layer, keras.layers.BatchNormalization)} == {0.0}  # FrozenBatchNorm2d: the COCO weights'
    rpn_only = {name: value for name, value in weights.items() if not name.startswith("roi_heads.")}
    rpn = rpn_tf.RPNModel.from_torchvision(rpn_only, image_size=SMALL)
    photo = np.random.default_rng(0).integers(0, 255, (1, 120, 90, 3)).astype(np.uint8)
    assert int(rpn.predict(photo, verbose=0)["num_proposals"][0]) > 100


def write_safetensors(path, arrays):
    """A .safetensors file (8-byte header length, JSON header, raw little-endian data) — its reader is checked
    against the safetensors library's own file in test_checkpoints.py."""
    names = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
    header, blobs, offset = {}, [], 0
    for name, value in arrays.items():
        data = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": names[value.dtype], "shape": list(value.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def test_rpn_tf_convert_writes_a_keras_model_that_predicts_fine_tunes_and_trains_from_the_cli(weights, tmp_path):
    checkpoint = str(tmp_path / "detector.safetensors")
    write_safetensors(checkpoint, weights)
    out = str(tmp_path / "detector.keras")
    result = subprocess.run([sys.executable, "-m", "rpn_tf.tools.cli", "convert", "torchvision", checkpoint, "--out",
                             out, "--image-size", "256", "256"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "FasterRCNN with 4 classes" in result.stdout
    model = keras.models.load_model(out)
    assert isinstance(model, rpn_tf.FasterRCNN) and model.num_classes == 4
    np.testing.assert_array_equal(np.array(model.roi_heads.box_head.classifier.bias),
                                  weights["roi_heads.box_predictor.cls_score.bias"])
    # the .keras file gives the converted model's detections
    photos = np.random.default_rng(1).integers(0, 255, (2, 200, 150, 3)).astype(np.uint8)
    want = rpn_tf.FasterRCNN.from_torchvision(weights, image_size=SMALL).predict(photos, verbose=0)
    got = model.predict(photos, verbose=0)
    assert int(want["num_detections"][0]) > 0
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-4, err_msg=key)
    # fine-tuning: torchvision's stages frozen (conv1, layer1), batch norm frozen, the rest trains
    backbone = model.rpn.backbone
    frozen_conv, trained_conv = backbone.get_layer("layer1_0_conv1"), backbone.get_layer("layer2_0_conv1")
    norm = backbone.get_layer("layer3_0_bn1")
    before = [np.array(v) for v in (frozen_conv.kernel, trained_conv.kernel, norm.moving_mean, norm.gamma)]
    elements = tf.data.Dataset.from_tensor_slices({"image": photos, "boxes": np.array([[[20, 20, 120, 100]]] * 2,
                                                                                      np.float32),
                                                   "classes": np.array([[2], [3]], np.int32)})
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    history = model.fit(elements.map(model.target_encoder).batch(2), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
    after = [np.array(v) for v in (frozen_conv.kernel, trained_conv.kernel, norm.moving_mean, norm.gamma)]
    np.testing.assert_array_equal(after[0], before[0])
    assert not np.array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[2], before[2])
    np.testing.assert_array_equal(after[3], before[3])
    result = subprocess.run([sys.executable, "-m", "rpn_tf.tools.cli", "convert", "torchvision",
                             str(tmp_path / "missing.pth"), "--out", out], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no such checkpoint file" in result.stderr
    # fine-tuned on another class count from the converted file: a new class predictor, the rest kept
    run = str(tmp_path / "run")
    result = subprocess.run([sys.executable, "-m", "rpn_tf.tools.cli", "train", "--init", out, "--num-classes", "1",
                             "--format", "deepforest", "--data", "OSBS_029", "--tile", "200", "--epochs", "1",
                             "--batch-size", "2", "--out", run], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    tuned = keras.models.load_model(os.path.join(run, "model.keras"))
    assert tuned.num_classes == 1 and tuned.roi_heads.box_head.classifier.kernel.shape[-1] == 2
    assert not tuned.rpn.backbone.get_layer("layer1_0_conv1").trainable  # torchvision's frozen stages, kept
