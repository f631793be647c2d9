import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
from rpn_tf.data.resize import resize_to_canvas


@pytest.mark.parametrize("policy,original,canvas,expected_valid", [
    ("letterbox", (643, 960), (800, 800), (536, 800)),
    ("letterbox", (960, 643), (800, 800), (800, 536)),
    ("letterbox", (100, 100), (400, 400), (400, 400)),
    ("stretch", (643, 960), (800, 800), (800, 800)),
    ("shorter_side", (643, 960), (1344, 1344), (800, 1194)),
    ("shorter_side", (400, 2000), (1344, 1344), (267, 1333)),  # the longer side caps at max_size
    ("shorter_side", (3000, 4000), (832, 832), (624, 832)),    # and the canvas caps everything
])
def test_geometry_boxes_in_and_out(policy, original, canvas, expected_valid):
    image = np.random.default_rng(0).integers(0, 255, (*original, 3), dtype=np.uint8)
    out, scale, valid = resize_to_canvas(image, canvas, rpn_tf.ResizeConfig(policy=policy))
    assert out.shape == (*canvas, 3) and out.dtype == tf.uint8
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_allclose(scale, np.array(expected_valid) / np.array(original), rtol=1e-6)
    if policy != "stretch":  # aspect ratio kept (up to rounding to whole pixels)
        assert abs(scale[0] - scale[1]) <= 1.0 / min(original)
    assert not out.numpy()[expected_valid[0]:].any() and not out.numpy()[:, expected_valid[1]:].any()
    # A box maps onto the canvas by image_scale and back by its inverse.
    box = np.array([10.0, 20.0, original[0] - 5.0, original[1] - 7.0], np.float32)
    on_canvas = box * np.tile(scale, 2)
    assert np.all(on_canvas[2:] <= np.array(expected_valid) + 1e-3)
    np.testing.assert_allclose(on_canvas / np.tile(scale, 2), box, rtol=1e-5)


def test_batch_float_and_identity():
    batch = tf.random.uniform([2, 30, 60, 3], maxval=255.0)
    out, scale, valid = resize_to_canvas(batch, (64, 64), "letterbox")
    assert out.shape == (2, 64, 64, 3) and out.dtype == tf.float32
    np.testing.assert_array_equal(valid, [32, 64])
    same, scale, _ = resize_to_canvas(tf.ones([64, 64, 3], tf.uint8), (64, 64))
    np.testing.assert_array_equal(same, 1)
    np.testing.assert_array_equal(scale, [1, 1])


def test_bad_resize_config():
    with pytest.raises(ValueError, match="policy"):
        rpn_tf.ResizeConfig(policy="crop")
    with pytest.raises(ValueError, match="max_size >= shorter_side"):
        rpn_tf.ResizeConfig(policy="shorter_side", shorter_side=800, max_size=600)
    with pytest.raises(TypeError, match="resize must be"):
        rpn_tf.RpnTargetEncoder(resize=3)
