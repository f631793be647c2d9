"""ROI Align against a NumPy reference written from torchvision's ``roi_align`` kernel, and the FPN level rule."""

import numpy as np
import pytest
import tensorflow as tf

from rpn_tf.ops.roi_align import assign_levels, crop_and_resize, multilevel_roi_align


def _bilinear(feature, y, x):
    height, width = feature.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * feature[y_low, x_low] + hy * lx * feature[y_low, x_high]
            + ly * hx * feature[y_high, x_low] + ly * lx * feature[y_high, x_high])


def reference_roi_align(feature, box, stride, size=7, ratio=2, aligned=True):
    offset = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = np.asarray(box, np.float64) / stride - offset
    height, width = y2 - y1, x2 - x1
    if not aligned:
        height, width = max(height, 1.0), max(width, 1.0)
    bin_h, bin_w = height / size, width / size
    out = np.zeros((size, size, feature.shape[-1]))
    for i in range(size):
        for j in range(size):
            total = 0.0
            for iy in range(ratio):
                y = y1 + i * bin_h + (iy + 0.5) * bin_h / ratio
                for ix in range(ratio):
                    x = x1 + j * bin_w + (ix + 0.5) * bin_w / ratio
                    total = total + _bilinear(feature, y, x)
            out[i, j] = total / ratio ** 2
    return out


# borders, outside the image, tiny, empty (zero size) and inverted-free ordinary boxes, in image pixels
BOXES = [[8.0, 8.0, 40.0, 56.0], [0.0, 0.0, 64.0, 64.0], [-10.0, -6.0, 20.0, 12.0], [50.0, 40.0, 70.0, 75.0],
         [30.0, 30.0, 31.0, 30.5], [20.0, 20.0, 20.0, 20.0], [3.3, 7.7, 29.1, 11.2], [-40.0, -40.0, -20.0, -20.0]]


IMPLEMENTATIONS = ["crop_and_resize", "gather"]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("aligned", [True, False])
def test_single_level_matches_reference(aligned, implementation):
    rng = np.random.default_rng(0)
    feature = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)  # stride 8 over a 64 x 64 image
    boxes = np.array([BOXES, BOXES[::-1]], np.float32)
    out = multilevel_roi_align([tf.constant(feature)], (8,), tf.constant(boxes), aligned=aligned,
                               implementation=implementation).numpy()
    assert out.shape == (2, len(BOXES), 7, 7, 3)
    for b in range(2):
        for r, box in enumerate(boxes[b]):
            np.testing.assert_allclose(out[b, r], reference_roi_align(feature[b], box, 8, aligned=aligned),
                                       atol=1e-5, err_msg=f"image {b} box {box}")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bilinear_samples_of_a_linear_map_are_exact(implementation):
    """On f(y, x) = 3y + 2x + 1 (cell centres at integer coordinates) each bin reads f at its centre."""
    ys, xs = np.meshgrid(np.arange(16.0), np.arange(16.0), indexing="ij")
    feature = (3 * ys + 2 * xs + 1)[None, :, :, None].astype(np.float32)
    box = np.array([[[16.0, 24.0, 44.0, 52.0]]], np.float32)  # stride 4: cells 4.0-11.0 x 6.0-13.0, interior
    out = multilevel_roi_align([tf.constant(feature)], (4,), tf.constant(box), output_size=2,
                               implementation=implementation).numpy()[0, 0, ..., 0]
    y1, x1 = 16.0 / 4 - 0.5, 24.0 / 4 - 0.5
    centres_y, centres_x = y1 + np.array([0.25, 0.75]) * 7.0, x1 + np.array([0.25, 0.75]) * 7.0
    np.testing.assert_allclose(out, 3 * centres_y[:, None] + 2 * centres_x[None, :] + 1, rtol=1e-5)


def test_level_assignment():
    sizes = np.array([224.0, 112.0, 448.0, 111.0, 10.0, 2000.0, 0.0])
    boxes = np.stack([np.zeros_like(sizes), np.zeros_like(sizes), sizes, sizes], -1)
    levels = assign_levels(tf.constant(boxes, tf.float32), 2, 5).numpy()
    np.testing.assert_array_equal(levels, [4, 3, 5, 2, 2, 5, 2])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_multilevel_reads_each_box_from_its_level(implementation):
    rng = np.random.default_rng(1)
    strides = (4, 8, 16, 32)
    features = [rng.normal(size=(1, 256 // s, 256 // s, 2)).astype(np.float32) for s in strides]
    boxes = np.array([[[0, 0, 30, 30], [10, 10, 140, 150], [0, 0, 240, 250], [-100, -100, 400, 400], [60, 60, 64, 61]]],
                     np.float32)
    levels = assign_levels(tf.constant(boxes), 2, 5).numpy()
    assert set(levels[0]) == {2, 3, 4, 5}
    out = multilevel_roi_align([tf.constant(f) for f in features], strides, tf.constant(boxes),
                               implementation=implementation).numpy()
    for r, box in enumerate(boxes[0]):
        k = levels[0, r] - 2
        np.testing.assert_allclose(out[0, r], reference_roi_align(features[k][0], box, strides[k]), atol=1e-5)


def test_xla_matches_eager_and_gradients_reach_the_features():
    rng = np.random.default_rng(2)
    features = [tf.constant(rng.normal(size=(2, 16 // k, 16 // k, 4)).astype(np.float32)) for k in (1, 2)]
    boxes = tf.constant(np.array([BOXES[:4], BOXES[4:]], np.float32))
    eager = multilevel_roi_align(features, (4, 8), boxes)  # crop_and_resize (the default) outside XLA
    compiled = tf.function(lambda f0, f1, b: multilevel_roi_align([f0, f1], (4, 8), b, implementation="gather"),
                           jit_compile=True)
    np.testing.assert_allclose(compiled(*features, boxes).numpy(), eager.numpy(), atol=1e-5)  # gather under XLA
    # the caller chooses (no private XLA detection): crop_and_resize inside XLA fails loudly, naming the op
    with pytest.raises(tf.errors.InvalidArgumentError, match="CropAndResize"):
        tf.function(lambda f0, f1, b: multilevel_roi_align([f0, f1], (4, 8), b), jit_compile=True)(*features, boxes)
    for implementation in IMPLEMENTATIONS:
        with tf.GradientTape() as tape:
            tape.watch(features)
            total = tf.reduce_sum(multilevel_roi_align(features, (4, 8), boxes, implementation=implementation))
        gradients = tape.gradient(total, features)
        assert all(g is not None and np.isfinite(g.numpy()).all() for g in gradients)
        assert float(tf.reduce_sum(tf.abs(gradients[0]))) > 0


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_mixed_precision_features_keep_their_dtype(implementation):
    feature = tf.cast(tf.random.normal([1, 8, 8, 2]), tf.float16)
    out = multilevel_roi_align([feature], (8,), tf.constant([[BOXES[0]]]), implementation=implementation)
    assert out.dtype == tf.float16


def test_bad_strides_are_named():
    feature = tf.zeros([1, 8, 8, 1])
    with pytest.raises(ValueError, match="power-of-two"):
        multilevel_roi_align([feature], (6,), tf.zeros([1, 1, 4]))
    with pytest.raises(ValueError, match="consecutive"):
        multilevel_roi_align([feature, feature], (4, 16), tf.zeros([1, 1, 4]))
    with pytest.raises(ValueError, match="one stride per feature map"):
        multilevel_roi_align([feature], (4, 8), tf.zeros([1, 1, 4]))
    with pytest.raises(ValueError, match="implementation"):
        multilevel_roi_align([feature], (8,), tf.zeros([1, 1, 4]), implementation="fast")


@pytest.mark.parametrize("points, dtype", [(14, tf.float32), (1, tf.float32), (5, tf.float16)])
def test_crop_and_resize_gradients_are_tensorflows_summed_in_a_fixed_order(points, dtype):
    """The image gradient is rpn-tf's (TensorFlow's CPU kernel adds in a thread-dependent order): equal to
    TensorFlow's, boxes partly outside, on the grid and of zero height included; the boxes' gradient is
    TensorFlow's own; two evaluations are identical bit for bit."""
    rng = np.random.default_rng(points)
    image = tf.constant(rng.normal(size=(2, 11, 13, 3)), dtype)
    boxes = rng.uniform(-0.3, 1.3, (40, 4)).astype(np.float32)
    boxes[:5], boxes[5:8] = [0, 0, 1, 1], [0.1, 0.2, 0.1, 0.9]
    boxes, indices = tf.constant(boxes), tf.constant(rng.integers(0, 2, 40), tf.int32)
    upstream = tf.constant(rng.normal(size=(40, points, points, 3)).astype(np.float32))

    def gradients(function):
        with tf.GradientTape() as tape:
            tape.watch([image, boxes])
            crops = function()
            total = tf.reduce_sum(crops * upstream)
        return crops, *tape.gradient(total, [image, boxes])

    ours = gradients(lambda: crop_and_resize(image, boxes, indices, points))
    theirs = gradients(lambda: tf.image.crop_and_resize(image, boxes, indices, [points, points]))
    np.testing.assert_array_equal(ours[0].numpy(), theirs[0].numpy())
    assert ours[1].dtype == dtype
    np.testing.assert_allclose(tf.cast(ours[1], tf.float32).numpy(), tf.cast(theirs[1], tf.float32).numpy(),
                               atol=1e-5 if dtype == tf.float32 else 1e-2)
    assert float(tf.reduce_sum(tf.abs(tf.cast(ours[1], tf.float32)))) > 0
    np.testing.assert_array_equal(ours[2].numpy(), theirs[2].numpy())
    np.testing.assert_array_equal(gradients(lambda: crop_and_resize(image, boxes, indices, points))[1].numpy(),
                                  ours[1].numpy())
