"""RPNModel as an assembly of parts: each part serializes on its own, RPNModel.from_parts takes parts of your own,
mismatched parts are named once at assembly, and FasterRCNN reuses an RPN's parts."""

import json
import os

import numpy as np
import pytest

import keras
import rpn_tf
from rpn_tf.modeling.losses import RpnLoss
from rpn_tf.modeling.proposal_generator import ProposalGenerator
from rpn_tf.modeling.rpn_parts import PART_NAMES, RpnParts

SIZE = 96


def images(count=2, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (count, SIZE, SIZE, 3)).astype("float32")


def own_backbone(stride=16, channels=24):
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.Conv2D(channels, 3, strides=stride, padding="same", activation="relu")(inputs)
    return keras.Model(inputs, features, name="own_backbone")


def small_rpn(**kwargs):
    keras.utils.set_random_seed(0)
    return rpn_tf.RPNModel((SIZE, SIZE), backbone="simple_fpn",
                           anchor_config=rpn_tf.MultiLevelAnchorConfig.fpn(smallest_size=16.0), **kwargs)


def test_every_part_round_trips_through_keras_serialization():
    model = small_rpn(proposal_config={"post_nms_top_k_test": 50}, box_loss_weight=2.0)
    assert isinstance(model.parts, RpnParts)
    for name in PART_NAMES:
        part = getattr(model.parts, name)
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(part))
        assert type(again) is type(part), name
        if hasattr(part, "get_config") and not isinstance(part, keras.Model):
            assert again.get_config() == part.get_config(), name
    encoder = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model.target_encoder))
    np.testing.assert_array_equal(encoder.anchors, model.anchors)
    generator = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model.proposal_generator))
    assert generator.config.post_nms_top_k_test == 50 and generator.level_sizes == model.level_sizes
    outputs = model(images(), training=False)
    for key in ("boxes", "scores", "num_proposals"):
        np.testing.assert_allclose(generator(outputs["objectness_logits"], outputs["box_deltas"])[key],
                                   model.propose(outputs)[key], atol=1e-5)


def test_from_parts_trains_saves_and_loads(tmp_path):
    encoder = rpn_tf.RpnTargetEncoder((SIZE, SIZE), rpn_tf.AnchorConfig(stride=16, scales=(1.5, 3.0)),
                                      max_boxes=4)
    keras.utils.set_random_seed(1)
    model = rpn_tf.RPNModel.from_parts(own_backbone(), encoder, loss=RpnLoss(box_loss_weight=2.0),
                                       proposal_generator=ProposalGenerator(
                                           (SIZE, SIZE), encoder.anchor_config,
                                           rpn_tf.ProposalConfig(post_nms_top_k_test=40, min_size=4)))
    assert model.target_encoder is encoder and model.rpn_loss.box_loss_weight == 2.0
    assert model.head.num_anchors_per_location == 6 and model.proposal_config.post_nms_top_k_test == 40
    boxes = np.array([[[10, 10, 40, 50], [50, 20, 90, 60], [-1, -1, -1, -1], [-1, -1, -1, -1]]] * 2, np.float32)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    logs = model.fit(images(), {"gt_boxes": boxes}, batch_size=2, epochs=2, verbose=0).history
    assert np.isfinite(logs["loss"]).all()
    path = str(tmp_path / "parts.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.rpn_loss.box_loss_weight == 2.0 and loaded.proposal_config.post_nms_top_k_test == 40
    np.testing.assert_allclose(loaded.predict(images(1), verbose=0)["proposal_boxes"],
                               model.predict(images(1), verbose=0)["proposal_boxes"], atol=1e-4)


def test_mismatched_parts_are_named_at_assembly():
    encoder = rpn_tf.RpnTargetEncoder((SIZE, SIZE), rpn_tf.AnchorConfig(stride=16))
    with pytest.raises(ValueError, match=r"feature map at stride 16 but the anchors need \(6, 6\)"):
        rpn_tf.RPNModel.from_parts(own_backbone(stride=8), encoder)
    other = ProposalGenerator((SIZE, SIZE), rpn_tf.AnchorConfig(stride=16, scales=(4.0,)))
    with pytest.raises(ValueError, match="decoded on the wrong anchors"):
        rpn_tf.RPNModel.from_parts(own_backbone(), encoder, proposal_generator=other)
    with pytest.raises(ValueError, match="head predicts 3 anchors per location but the anchors have 9"):
        rpn_tf.RPNModel.from_parts(own_backbone(), encoder, head=rpn_tf.modeling.head.RpnHead(3, 16))
    with pytest.raises(TypeError, match="target_encoder must be an RpnTargetEncoder"):
        rpn_tf.RPNModel.from_parts(own_backbone(), {"image_size": (SIZE, SIZE)})


def test_argument_models_keep_the_config_of_earlier_releases():
    """The argument form of get_config is what .keras files of earlier releases hold: one written by the release
    before the parts (tests/golden/rpn_config_v1.json) loads and gives the same config back."""
    with open(os.path.join(os.path.dirname(__file__), "..", "golden", "rpn_config_v1.json")) as file:
        saved = json.load(file)
    model = rpn_tf.RPNModel.from_config(saved)
    config = model.get_config()
    assert "parts" not in config
    # every saved value comes back; fields added since (each with the default that keeps the old behaviour) too
    added = {"resize": {"size_divisible": 32}, "proposal_config": {"top_k_before_min_size": False}}
    for key, value in saved.items():
        if isinstance(value, dict):
            assert config[key] == {**value, **added.get(key, {})}, key
        else:
            assert config[key] == value, key
    assert model.proposal_config.post_nms_top_k_test == saved["proposal_config"]["post_nms_top_k_test"]


def test_a_detector_on_a_from_parts_rpn_saves_and_loads(tmp_path):
    encoder = rpn_tf.RpnTargetEncoder((SIZE, SIZE), rpn_tf.AnchorConfig(stride=16, scales=(1.5, 3.0)))
    keras.utils.set_random_seed(2)
    rpn = rpn_tf.RPNModel.from_parts(own_backbone(), encoder)
    detector = rpn_tf.FasterRCNN(2, rpn=rpn, representation_size=16, detection_config={"score_threshold": 0.0})
    path = str(tmp_path / "detector.keras")
    detector.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.rpn.parts.target_encoder.get_config() == encoder.get_config()
    for key, value in detector.predict(images(1), verbose=0).items():
        np.testing.assert_allclose(loaded.predict(images(1), verbose=0)[key], value, atol=1e-4, err_msg=key)


def test_assigning_a_proposal_config_rebuilds_the_generator():
    model = small_rpn()
    model.proposal_config = {"post_nms_top_k_test": 20, "nms": "padded"}
    assert model.proposal_generator.config.post_nms_top_k_test == 20 and model.parts.proposal_generator.config.nms == \
        "padded"
    assert model.predict(images(1), verbose=0)["proposal_boxes"].shape == (1, 20, 4)
