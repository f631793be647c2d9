"""Batch norm of a pretrained backbone is frozen (torchvision's FrozenBatchNorm2d, detectron2's FrozenBN): with weights
loaded, ``fit`` leaves the moving statistics and the affine parameters as loaded; from scratch they train."""

import numpy as np
import pytest

import keras
import rpn_tf

SIZE = 64


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """MobileNetV2 weights with batch-norm statistics far from their initial values (zero mean / unit variance
    would hide a layer that trains them)."""
    keras.utils.set_random_seed(0)
    trunk = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    rng = np.random.default_rng(0)
    for layer in trunk.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.5, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
    path = str(tmp_path_factory.mktemp("weights") / "mobilenet_v2.weights.h5")
    trunk.save_weights(path)
    return path


def batch_norms(model):
    return [layer for layer in model.backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]


def fit_two_steps(model):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (4, SIZE, SIZE, 3)).astype(np.uint8)
    boxes = np.array([[[8, 8, 40, 40], [20, 24, 60, 56]]] * 4, np.float32)
    model.compile(optimizer=keras.optimizers.SGD(0.05))
    model.fit(images, {"gt_boxes": boxes}, batch_size=2, epochs=1, verbose=0)


def state(model):
    return [np.array(v) for layer in batch_norms(model)
            for v in (layer.moving_mean, layer.moving_variance, layer.gamma, layer.beta)]


def small_rpn(**kwargs):
    return rpn_tf.RPNModel((SIZE, SIZE), backbone="mobilenet_v2", anchor_config=rpn_tf.AnchorConfig(scales=(2.0,)),
                           **kwargs)


def test_loaded_weights_freeze_batch_norm_through_fit_and_a_round_trip(weights_file, tmp_path):
    model = small_rpn(weights=weights_file)
    assert model.freeze_batch_norm and batch_norms(model) and not any(l.trainable for l in batch_norms(model))
    before, conv = state(model), np.array(model.backbone.get_layer("Conv1").kernel)
    fit_two_steps(model)
    for old, new in zip(before, state(model)):
        np.testing.assert_array_equal(old, new)
    assert not np.array_equal(conv, np.array(model.backbone.get_layer("Conv1").kernel))  # the rest trains
    path = str(tmp_path / "frozen.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # the choice is in the config (weights are not reloaded)
    assert loaded.freeze_batch_norm and not any(layer.trainable for layer in batch_norms(loaded))


@pytest.mark.parametrize("kwargs", [{"weights": None}, {"freeze_batch_norm": False}])
def test_from_scratch_or_when_asked_batch_norm_trains(weights_file, kwargs):
    model = small_rpn(**({"weights": weights_file, **kwargs} if "freeze_batch_norm" in kwargs else kwargs))
    assert not model.freeze_batch_norm
    before = state(model)
    fit_two_steps(model)
    changed = sum(not np.array_equal(old, new) for old, new in zip(before, state(model)))
    assert changed > len(before) // 2


def test_freeze_batch_norm_for_a_backbone_of_your_own():
    from rpn_tf.modeling.backbones import freeze_batch_norm

    inputs = keras.Input((SIZE, SIZE, 3))
    inner = keras.Sequential([keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()])
    backbone = keras.Model(inputs, keras.layers.BatchNormalization()(inner(inputs)))
    assert freeze_batch_norm(backbone) == 2  # nested models too
    assert not any(layer.trainable for layer in [backbone.layers[-1], inner.layers[-1]])
