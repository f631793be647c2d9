import numpy as np
import pytest

import rpn_tf
from reference import anchors_np

ARTICLE_FIRST_ROWS = [
    [-37.254834, -82.50966799, 53.254834, 98.50966799],
    [-82.50966799, -173.01933598, 98.50966799, 189.01933598],
    [-173.01933598, -354.03867197, 189.01933598, 370.03867197],
]
ARTICLE_LAST_ROWS = [
    [701.49033201, 746.745166, 882.50966799, 837.254834],
    [610.98066402, 701.49033201, 973.01933598, 882.50966799],
    [429.96132803, 610.98066402, 1154.03867197, 973.01933598],
]


def test_article_anchor_rows():
    anchors = rpn_tf.generate_anchors((800, 800), rpn_tf.AnchorConfig()).numpy()
    assert anchors.shape == (22500, 4)
    assert anchors.dtype == np.float32
    np.testing.assert_allclose(anchors[:3], ARTICLE_FIRST_ROWS, atol=1e-4)
    np.testing.assert_allclose(anchors[-3:], ARTICLE_LAST_ROWS, atol=1e-4)


def test_defaults_are_the_articles():
    config = rpn_tf.AnchorConfig()
    assert (config.stride, config.scales, config.ratios) == (16, (8.0, 16.0, 32.0), (0.5, 1.0, 2.0))
    assert config.num_anchors_per_location == 9
    np.testing.assert_allclose(rpn_tf.generate_anchors().numpy()[:3], ARTICLE_FIRST_ROWS, atol=1e-4)


def test_order_row_column_ratio_major_scale_minor():
    config = rpn_tf.AnchorConfig(stride=16, scales=(1, 2), ratios=(0.5, 2.0))
    anchors = rpn_tf.generate_anchors((32, 48), config).numpy().reshape(2, 3, 2, 2, 4)  # rows, cols, ratio, scale
    centres = (anchors[..., :2] + anchors[..., 2:]) / 2
    np.testing.assert_allclose(centres[1, 2, 0, 0], [24, 40])
    heights = anchors[..., 2] - anchors[..., 0]
    widths = anchors[..., 3] - anchors[..., 1]
    np.testing.assert_allclose(heights / widths, np.broadcast_to([[0.5, 0.5], [2.0, 2.0]], (2, 3, 2, 2)), rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(heights * widths)[0, 0, 0], [16, 32], rtol=1e-6)  # scale-minor


def test_matches_loop_reference_and_non_divisible_size():
    config = rpn_tf.AnchorConfig(stride=16, scales=(2, 4), ratios=(0.5, 1.0, 2.0))
    anchors = rpn_tf.generate_anchors((100, 70), config).numpy()
    expected = anchors_np((100, 70), 16, (2, 4), (0.5, 1.0, 2.0))
    assert anchors.shape == (7 * 5 * 6, 4) == (rpn_tf.num_anchors((100, 70), config), 4)
    np.testing.assert_allclose(anchors, expected, atol=1e-4)


def test_multi_level_concatenates_levels_in_order():
    levels = [rpn_tf.AnchorConfig(stride=8, scales=(4,), ratios=(1.0,)),
              rpn_tf.AnchorConfig(stride=16, scales=(4, 8), ratios=(0.5, 2.0))]
    anchors = rpn_tf.generate_anchors((64, 64), levels).numpy()
    first = rpn_tf.generate_anchors((64, 64), levels[0]).numpy()
    second = rpn_tf.generate_anchors((64, 64), levels[1]).numpy()
    assert anchors.shape == (64 + 16 * 4, 4)
    np.testing.assert_array_equal(anchors, np.concatenate([first, second]))
    multi = rpn_tf.MultiLevelAnchorConfig(tuple(levels))
    np.testing.assert_array_equal(rpn_tf.generate_anchors((64, 64), multi).numpy(), anchors)
    assert multi.num_anchors_per_location == (1, 4)


@pytest.mark.parametrize("kwargs, message", [
    ({"stride": 0}, "stride"),
    ({"stride": 2.5}, "stride"),
    ({"scales": ()}, "scales"),
    ({"ratios": (1.0, -2.0)}, "ratios"),
    ({"scales": (float("nan"),)}, "scales"),
])
def test_bad_anchor_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rpn_tf.AnchorConfig(**kwargs)


@pytest.mark.parametrize("image_size", [(0, 10), (10,), (10.5, 10), "800"])
def test_bad_image_size(image_size):
    with pytest.raises(ValueError, match="image_size"):
        rpn_tf.generate_anchors(image_size)


def test_bad_config_type():
    with pytest.raises(TypeError, match="anchor_config"):
        rpn_tf.generate_anchors((32, 32), 16)
    with pytest.raises(ValueError, match="at least one"):
        rpn_tf.MultiLevelAnchorConfig(())
