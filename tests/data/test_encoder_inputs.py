"""Bad or unusual encoder input: each is named in an error or has a documented, tested behaviour."""

import numpy as np
import pytest
import tensorflow as tf

import rpn_tf

ENCODER = rpn_tf.RpnTargetEncoder((128, 128), rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)), seed=0,
                                  resize="stretch", max_boxes=8)
IMAGE = np.zeros((128, 128, 3), np.uint8)


def test_box_entirely_outside_the_image_is_named():
    with pytest.raises(tf.errors.InvalidArgumentError, match="entirely outside the image"):
        ENCODER(IMAGE, np.array([[10, 10, 40, 40], [130, 20, 150, 60]], np.float32))
    # inside ds.map too
    dataset = tf.data.Dataset.from_tensors((IMAGE, np.array([[0, 200, 20, 240]], np.float32))).map(ENCODER)
    with pytest.raises(tf.errors.InvalidArgumentError, match="entirely outside"):
        next(iter(dataset))


def test_box_partly_outside_is_clipped():
    _, targets = ENCODER(IMAGE, np.array([[-10, 100, 40, 140]], np.float32))
    np.testing.assert_allclose(targets["gt_boxes"][0], [0, 100, 40, 128])


def test_boxes_that_look_normalized_get_a_hint():
    with pytest.raises(tf.errors.InvalidArgumentError, match="normalized_boxes=True"):
        ENCODER(IMAGE, np.array([[0.1, 0.1, 0.5, 0.6]], np.float32))
    normalized = rpn_tf.RpnTargetEncoder((128, 128), rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)),
                                         normalized_boxes=True, resize="stretch", max_boxes=8)
    _, targets = normalized(IMAGE, np.array([[0.1, 0.1, 0.5, 0.6]], np.float32))
    np.testing.assert_allclose(targets["gt_boxes"][0], [12.8, 12.8, 64, 76.8], rtol=1e-5)


def test_padding_rows_in_the_input_stay_padding():
    boxes = np.array([[10, 10, 40, 40], [-1, -1, -1, -1], [-1, -1, -1, -1]], np.float32)
    image, targets = ENCODER({"image": np.zeros((64, 64, 3), np.uint8), "boxes": boxes,
                              "classes": np.array([3, -1, -1])})
    assert int(targets["num_boxes"]) == 1
    np.testing.assert_array_equal(targets["gt_classes"], [3] + [-1] * 7)
    np.testing.assert_allclose(targets["gt_boxes"][0], [20, 20, 80, 80])  # scaled ×2; padding not scaled
    np.testing.assert_array_equal(targets["gt_boxes"][1:], -1)


def test_unknown_channel_count_inside_ds_map():
    gray = tf.io.encode_png(np.full((32, 32, 1), 200, np.uint8))
    rgba = tf.io.encode_png(np.full((32, 32, 4), 200, np.uint8))
    boxes = np.array([[2, 2, 20, 20]], np.float32)

    def decode(data):
        return tf.io.decode_image(data, expand_animations=False), boxes  # channels unknown statically

    image, _ = next(iter(tf.data.Dataset.from_tensors(gray).map(decode).map(ENCODER)))
    assert image.shape == (128, 128, 3) and int(image[0, 0, 0]) == 200
    with pytest.raises(tf.errors.InvalidArgumentError, match="1 or 3 channels"):
        next(iter(tf.data.Dataset.from_tensors(rgba).map(decode).map(ENCODER)))


def test_tiny_boxes_are_ignored_and_counted_not_matched_to_every_anchor():
    tiny = np.array([[50, 50, 50.1, 50.1]], np.float32)
    _, targets = ENCODER(IMAGE, tiny)
    assert int(targets["num_ignored_boxes"]) == 1
    assert not (targets["rpn_labels"].numpy() == 1).any()
    # Without the minimum size the article's rule applies: only the tiny box's best anchors are forced positive
    # (relative tie tolerance), not every inside anchor of IoU 0.
    keep_tiny = rpn_tf.RpnTargetEncoder((128, 128), rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)),
                                        min_gt_size=0.0, resize="stretch")
    labels, _ = keep_tiny.label_anchors(tiny)
    assert 1 <= int((labels.numpy() == 1).sum()) <= 4


def test_network_input_size_errors_name_both_sizes():
    model = rpn_tf.RPNModel((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(1.0,)), backbone="simple",
                            head_channels=8)
    with pytest.raises(ValueError, match="expects images of 64x64.*got 48x64"):
        model(np.zeros((1, 48, 64, 3), np.float32))
    call = tf.function(lambda images: model(images), input_signature=[tf.TensorSpec([None, None, None, 3])])
    with pytest.raises(tf.errors.InvalidArgumentError, match="expects images of 64x64"):
        call(tf.zeros([1, 80, 80, 3]))
    # predict resizes raw images of any size itself
    assert model.predict(np.zeros((1, 48, 200, 3), np.uint8), verbose=0)["proposal_boxes"].shape[0] == 1
