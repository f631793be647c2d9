import numpy as np
import keras
import pytest
import tensorflow as tf

import rpn_tf

IMAGE_SIZE = (64, 64)
ANCHORS = rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0), ratios=(0.5, 1.0, 2.0))
GT = np.array([[8, 8, 40, 30], [30, 34, 60, 62]], np.float32)


def small_model(**kwargs):
    keras.utils.set_random_seed(0)
    kwargs.setdefault("target_encoder_config", {"seed": 3, "max_boxes": 4, "samples_per_image": 64})
    return rpn_tf.RPNModel(IMAGE_SIZE, ANCHORS, backbone="simple", head_channels=32, **kwargs)


def images_and_boxes(count=4, boxes=GT):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(count, *IMAGE_SIZE, 3)).astype(np.uint8)
    return images, np.stack([boxes] * count)


def encoded_dataset(model, count=4, batch=4, boxes=GT):
    images, gt = images_and_boxes(count, boxes)
    return tf.data.Dataset.from_tensor_slices((images, gt)).map(model.target_encoder).batch(batch)


def test_outputs_follow_encoder_anchor_order():
    model = small_model()
    outputs = model(np.zeros((2, *IMAGE_SIZE, 3), np.uint8))
    assert outputs["objectness_logits"].shape == (2, 4 * 4 * 6)
    assert outputs["box_deltas"].shape == (2, 4 * 4 * 6, 4)
    # Anchor a = (row * Wf + col) * K + k reads channel k of the objectness map at (row, col).
    features = model.head.conv(model.backbone(model.preprocessing(np.ones((1, *IMAGE_SIZE, 3), np.float32))))
    logits_map = model.head.objectness(features).numpy()  # (1, 4, 4, 6)
    deltas_map = model.head.deltas(features).numpy()  # (1, 4, 4, 24)
    outputs = model(np.ones((1, *IMAGE_SIZE, 3), np.float32))
    row, col, k = 2, 3, 4
    index = (row * 4 + col) * 6 + k
    np.testing.assert_allclose(outputs["objectness_logits"].numpy()[0, index], logits_map[0, row, col, k], rtol=1e-5)
    np.testing.assert_allclose(outputs["box_deltas"].numpy()[0, index], deltas_map[0, row, col, 4 * k:4 * k + 4],
                               rtol=1e-5)


def test_one_batch_overfit_losses_fall():
    model = small_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    first = model.evaluate(encoded_dataset(model), verbose=0, return_dict=True)  # untrained
    dataset = encoded_dataset(model).cache().repeat(40)
    history = model.fit(dataset, epochs=1, verbose=0)
    last = model.evaluate(encoded_dataset(model), verbose=0, return_dict=True)
    assert np.isfinite(history.history["loss"][0])
    assert last["loss"] < 0.5 * first["loss"]
    assert last["rpn_objectness_loss"] < 0.5 * first["rpn_objectness_loss"]
    assert last["rpn_objectness_accuracy"] > 0.9


def test_zero_gt_batch_finite():
    model = small_model()
    model.compile(optimizer="sgd")
    empty = -np.ones((0, 4), np.float32)
    images, _ = images_and_boxes(2)
    dataset = tf.data.Dataset.from_tensor_slices(images).map(lambda image: (image, empty)).map(
        model.target_encoder).batch(2)
    logs = model.fit(dataset, epochs=1, verbose=0).history
    assert all(np.isfinite(values[0]) for values in logs.values())
    assert logs["rpn_box_loss"][0] == 0.0
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    assert all(np.isfinite(value) for value in results.values())


def test_on_accelerator_labeling_equals_dataset_targets():
    model = small_model()
    images, gt = images_and_boxes(4)
    dataset = tf.data.Dataset.from_tensor_slices((images, gt)).map(model.target_encoder).batch(4)
    _, targets = next(iter(dataset))
    _, in_graph = model._unpack((images, {"gt_boxes": targets["gt_boxes"]}))
    np.testing.assert_array_equal(in_graph["rpn_labels"].numpy(), targets["rpn_labels"].numpy())
    np.testing.assert_allclose(in_graph["rpn_deltas"].numpy(), targets["rpn_deltas"].numpy(), atol=1e-6)
    # and model.fit accepts a dataset of raw padded GT
    raw = dataset.map(lambda image, t: (image, {"gt_boxes": t["gt_boxes"]}))
    model.compile(optimizer="adam")
    history = model.fit(raw, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_mirrored_strategy_matches_single_device(mirrored_strategy):
    images, gt = images_and_boxes(4, GT)
    single = small_model()
    dataset = tf.data.Dataset.from_tensor_slices((images, gt)).map(single.target_encoder).batch(4)
    initial = single.get_weights()
    single.compile(optimizer=keras.optimizers.SGD(0.1))
    single_loss = single.fit(dataset, epochs=1, verbose=0).history["loss"][0]

    strategy = mirrored_strategy
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        mirrored = small_model()
        mirrored.set_weights(initial)
        mirrored.compile(optimizer=keras.optimizers.SGD(0.1))
    mirrored_loss = mirrored.fit(dataset, epochs=1, verbose=0).history["loss"][0]
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-5)
    for got, want in zip(mirrored.get_weights(), single.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_jit_compile_and_mixed_precision_train():
    model = small_model()
    model.compile(optimizer="adam", jit_compile=True)
    assert np.isfinite(model.fit(encoded_dataset(model), epochs=1, verbose=0).history["loss"][0])
    # Every step compiles whole (the padded NMS); no override of Keras's make_*_function.
    assert model.jit_compile is True
    results = model.evaluate(encoded_dataset(model), verbose=0, return_dict=True)
    assert np.isfinite(results["loss"]) and "recall@300_iou0.5" in results
    images = encoded_dataset(model).map(lambda image, targets: image)
    predictions = model.predict(images, verbose=0)
    assert predictions["proposal_boxes"].shape == (4, 300, 4)
    # The same weights without XLA (combined NMS) give the same proposals.
    plain = small_model()
    plain.set_weights(model.get_weights())
    plain.compile(optimizer="adam", jit_compile=False)
    expected = plain.predict(images, verbose=0)
    np.testing.assert_array_equal(predictions["num_proposals"], expected["num_proposals"])
    # As sets: XLA's float rounding of the network may swap two near-tied scores.
    for got, want in zip(predictions["proposal_boxes"], expected["proposal_boxes"]):
        np.testing.assert_allclose(np.unique(got.round(2), axis=0), np.unique(want.round(2), axis=0), atol=0.02)
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = small_model()
        model.compile(optimizer="adam")
        assert model.head.conv.compute_dtype == "float16"
        history = model.fit(encoded_dataset(model), epochs=1, verbose=0).history
        assert np.isfinite(history["loss"][0])
        assert model(np.zeros((1, *IMAGE_SIZE, 3)))["objectness_logits"].dtype == "float32"
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_save_load_round_trip(tmp_path):
    model = small_model()
    model.compile(optimizer="adam")
    model.fit(encoded_dataset(model), epochs=1, verbose=0)
    images, _ = images_and_boxes(2)
    expected = model(images)
    path = str(tmp_path / "rpn.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, rpn_tf.RPNModel)
    got = loaded(images)
    for key in expected:
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), atol=1e-6)
    weights_path = str(tmp_path / "rpn.weights.h5")
    model.save_weights(weights_path)
    fresh = small_model()
    fresh.load_weights(weights_path)
    np.testing.assert_allclose(fresh(images)["box_deltas"].numpy(), expected["box_deltas"].numpy(), atol=1e-6)


def test_custom_backbone_and_errors():
    inputs = keras.Input((*IMAGE_SIZE, 3))
    features = keras.layers.Conv2D(8, 3, strides=16, padding="same")(inputs)
    backbone = keras.Model(inputs, features)
    model = rpn_tf.RPNModel(IMAGE_SIZE, ANCHORS, backbone=backbone, backbone_stride=16, head_channels=8)
    assert model(np.zeros((1, *IMAGE_SIZE, 3)))["objectness_logits"].shape == (1, 96)
    with pytest.raises(ValueError, match="stride"):
        rpn_tf.RPNModel(IMAGE_SIZE, ANCHORS, backbone=backbone)
    with pytest.raises(ValueError, match="backbone must be one of"):
        rpn_tf.RPNModel(IMAGE_SIZE, ANCHORS, backbone="alexnet")
    with pytest.raises(ValueError, match="feature map"):
        rpn_tf.RPNModel((72, 72), ANCHORS, backbone=backbone, backbone_stride=16)
    with pytest.raises(ValueError, match="targets need"):
        small_model()._unpack((np.zeros((1, *IMAGE_SIZE, 3)), {"classes": np.ones((1, len(GT)), np.int32)}))


def test_builtin_application_backbones_build_offline():
    model = rpn_tf.RPNModel((64, 64), ANCHORS, backbone="mobilenet_v2", weights=None, head_channels=8,
                            freeze_backbone_layers=5)
    assert model(np.zeros((1, 64, 64, 3)))["objectness_logits"].shape == (1, 96)
    assert not any(layer.trainable for layer in model.backbone.layers[:5])
    vgg = rpn_tf.RPNModel((64, 64), ANCHORS, backbone="vgg16", head_channels=8)
    assert vgg.backbone.output.shape[-1] == 512


@pytest.mark.parametrize("backbone,channels", [("resnet50_fpn", 256), ("mobilenet_v2_fpn", 256)])
def test_application_pyramids_build_offline(backbone, channels):
    model = rpn_tf.RPNModel((96, 128), backbone=backbone, weights=None, head_channels=8)
    assert model.backbone_strides == (4, 8, 16, 32, 64)
    assert [tuple(output.shape[1:]) for output in model.backbone.output] == [
        (24, 32, channels), (12, 16, channels), (6, 8, channels), (3, 4, channels), (2, 2, channels)]
    assert model(np.zeros((1, 96, 128, 3)))["objectness_logits"].shape == (1, model.num_anchors)
