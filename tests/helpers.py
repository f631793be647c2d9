"""Helpers shared by the tests (imported as a module: tests/ is on sys.path, see conftest.py)."""

import numpy as np

import rpn_tf

IMAGE_SIZE = (800, 800)


def random_boxes(rng, count, image_size=IMAGE_SIZE, min_size=16, max_size=400):
    height, width = image_size
    sizes = rng.uniform(min_size, max_size, size=(count, 2))
    top_left = rng.uniform(0, 1, size=(count, 2)) * (np.array([height, width]) - sizes)
    return np.concatenate([top_left, top_left + sizes], axis=1).astype(np.float32)


def tiny_encoder(**kwargs):
    """32×32 image, stride 16, one 16×16 anchor per cell: anchors [0,0,16,16], [0,16,16,32], [16,0,..], [16,16,..]."""
    return rpn_tf.RpnTargetEncoder((32, 32), rpn_tf.AnchorConfig(stride=16, scales=(1,), ratios=(1.0,)), **kwargs)


def require_native():
    """Skips the test when no C++ compiler exists (the native ops cannot be built there); fails when one exists but
    the native ops still do not load (a build problem the tests must catch)."""
    import pytest

    from rpn_tf.ops import native

    if not native.compiler():
        pytest.skip("no C++ compiler: the native ops cannot be built here")
    assert native.available(), native.unavailable_reason()
