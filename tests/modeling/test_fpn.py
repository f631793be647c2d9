import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
import rpn_tf.serving  # noqa: E402,F401  (rpn_tf.serving.export_saved_model)
from rpn_tf.data import deepforest

IMAGE_SIZE = (128, 128)
STRIDES = (4, 8, 16, 32, 64)
GT = np.array([[8, 8, 40, 30], [30, 34, 90, 100], [60, 10, 120, 50]], np.float32)


def fpn_model(**kwargs):
    keras.utils.set_random_seed(0)
    kwargs.setdefault("target_encoder_config", {"seed": 3, "max_boxes": 4})
    return rpn_tf.RPNModel(IMAGE_SIZE, backbone="simple_fpn", head_channels=16, **kwargs)


@pytest.fixture(scope="module")
def model():
    return fpn_model()


def test_levels_anchors_and_output_order(model):
    assert model.backbone_strides == STRIDES
    levels = model.anchor_config.levels
    assert [level.stride for level in levels] == list(STRIDES)
    # One size per level, 32 → 512 px, three ratios.
    for level, size in zip(levels, (32, 64, 128, 256, 512)):
        assert level.stride * level.scales[0] == size and level.ratios == (0.5, 1.0, 2.0)
    cells = [32 * 32, 16 * 16, 8 * 8, 4 * 4, 2 * 2]
    assert model.level_sizes == tuple(3 * c for c in cells)
    assert model.proposal_config == rpn_tf.ProposalConfig.fpn()
    outputs = model(np.zeros((2, *IMAGE_SIZE, 3), np.uint8))
    assert outputs["objectness_logits"].shape == (2, 3 * sum(cells))
    assert outputs["box_deltas"].shape == (2, 3 * sum(cells), 4)
    # Level l's anchor (row, col, k) reads the shared head's map of level l at (row, col), channel k.
    images = np.random.default_rng(1).integers(0, 255, (1, *IMAGE_SIZE, 3)).astype(np.float32)
    features = model.backbone(model.preprocessing(images))
    outputs = model(images)
    start = 0
    for level, (feature, count) in enumerate(zip(features, cells)):
        logits_map = model.head.objectness(model.head.conv(feature)).numpy()[0]
        side = int(np.sqrt(count))
        row, col, k = side - 1, side // 2, 2
        index = start + (row * side + col) * 3 + k
        np.testing.assert_allclose(outputs["objectness_logits"].numpy()[0, index], logits_map[row, col, k],
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(model.anchors.numpy()[index],
                                   rpn_tf.generate_anchors(IMAGE_SIZE, model.anchor_config.levels[level]).numpy()[
                                       (row * side + col) * 3 + k])
        start += 3 * count


def test_fit_one_batch_loss_falls_and_round_trip(tmp_path):
    model = fpn_model()
    images = np.random.default_rng(0).integers(0, 255, (4, *IMAGE_SIZE, 3)).astype(np.uint8)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.stack([GT] * 4))).map(model.target_encoder).batch(4)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    losses = model.fit(dataset.repeat(12), epochs=1, verbose=0, steps_per_epoch=12).history["loss"]
    history = model.fit(dataset, epochs=6, verbose=0).history["loss"]
    assert history[-1] < 0.7 * losses[0], (losses, history)
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    # evaluate's recall is the recall of the proposals predict gives (an independent count in NumPy)
    proposals = model.predict(images, verbose=0)
    found = 0
    for boxes, count in zip(proposals["proposal_boxes"], proposals["num_proposals"]):
        boxes = boxes[:min(int(count), 300)]
        inter_h = np.clip(np.minimum(boxes[:, None, 2], GT[None, :, 2]) - np.maximum(boxes[:, None, 0], GT[None, :, 0]),
                          0, None)
        inter_w = np.clip(np.minimum(boxes[:, None, 3], GT[None, :, 3]) - np.maximum(boxes[:, None, 1], GT[None, :, 1]),
                          0, None)
        area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
        iou = inter_h * inter_w / (area(boxes)[:, None] + area(GT)[None, :] - inter_h * inter_w)
        found += int(np.sum(iou.max(axis=0) >= 0.5))
    assert found > 0
    assert results["recall@300_iou0.5"] == pytest.approx(found / (4 * len(GT)), abs=1e-6)
    path = str(tmp_path / "fpn.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.anchor_config, rpn_tf.MultiLevelAnchorConfig)
    np.testing.assert_allclose(restored(images[:1])["objectness_logits"], model(images[:1])["objectness_logits"],
                               atol=1e-5)


def test_predict_raw_photo_of_any_size(model):
    photo = np.random.default_rng(2).integers(0, 255, (93, 140, 3)).astype(np.uint8)
    out = model.predict(photo[None], verbose=0)
    count = int(out["num_proposals"][0])
    boxes = out["proposal_boxes"][0, :count]
    assert count > 0 and np.all(boxes >= 0) and np.all(boxes[:, 2] <= 93) and np.all(boxes[:, 3] <= 140)
    np.testing.assert_allclose(out["image_scale"][0], [85 / 93, 128 / 140], rtol=1e-6)


def test_user_backbone_returning_a_dict_of_levels():
    inputs = keras.Input((*IMAGE_SIZE, 3))
    c3 = keras.layers.Conv2D(8, 3, strides=8, padding="same")(inputs)
    c4 = keras.layers.Conv2D(8, 3, strides=2, padding="same")(c3)
    backbone = keras.Model(inputs, {"p4": c4, "p3": c3})
    model = rpn_tf.RPNModel(IMAGE_SIZE, backbone=backbone, head_channels=8)
    assert model.backbone_strides == (8, 16)
    assert [level.stride * level.scales[0] for level in model.anchor_config.levels] == [32, 64]
    with pytest.raises(ValueError, match="strides"):
        rpn_tf.RPNModel(IMAGE_SIZE, rpn_tf.AnchorConfig(stride=8), backbone=backbone)


def test_fpn_export_saved_model_cli_on_a_non_square_photo(model, tmp_path):
    export_dir = rpn_tf.serving.export_saved_model(model, str(tmp_path / "serving"), "rpn")
    photo, _ = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    photo = photo[:250, :400]  # a real 250×400 photo
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.array([tf.io.encode_jpeg(photo).numpy()], dtype=object), allow_pickle=True)
    script = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    result = subprocess.run([*command, "run", "--dir", export_dir, "--tag_set", "serve", "--signature_def",
                             "serving_default", "--inputs", f"encoded_images={inputs}", "--outdir",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr
    boxes = np.load(tmp_path / "out" / "proposal_boxes.npy")
    count = int(np.load(tmp_path / "out" / "num_proposals.npy")[0])
    assert boxes.shape == (1, 1000, 4) and count > 0
    assert np.all(boxes[0, :count] >= 0) and np.all(boxes[0, :count, 2] <= 250) and np.all(boxes[0, :count, 3] <= 400)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "image_scale.npy")[0], [80 / 250, 128 / 400], rtol=1e-6)
