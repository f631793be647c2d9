import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
from helpers import IMAGE_SIZE, random_boxes, tiny_encoder


def test_zero_gt_gives_negatives_and_no_nan(encoder):
    targets = encoder.encode(tf.zeros([0, 4]))
    labels = targets["rpn_labels"].numpy()
    assert (labels == 0).sum() == 256 and (labels == 1).sum() == 0
    assert np.all(targets["rpn_deltas"].numpy() == 0)


def test_padded_gt_rows_are_ignored(encoder):
    rng = np.random.default_rng(1)
    gt = random_boxes(rng, 5)
    padded = np.concatenate([gt, -np.ones((20, 4), np.float32), [[50, 50, 50, 90]]])  # plus a zero-area box
    for got, want in zip(encoder.label_anchors(padded), encoder.label_anchors(gt)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    np.testing.assert_allclose(encoder.encode(padded)["rpn_deltas"].numpy(), encoder.encode(gt)["rpn_deltas"].numpy())
    all_padding = encoder.encode(-np.ones((4, 4), np.float32))
    assert (all_padding["rpn_labels"].numpy() == 0).sum() == 256


@pytest.mark.parametrize("box, message", [
    ([10, 10, 5, 20], "inverted"),
    ([10, 30, 20, 20], "inverted"),
    ([np.nan, 0, 10, 10], "NaN or Inf"),
    ([0, 0, np.inf, 10], "NaN or Inf"),
])
def test_bad_boxes_raise_naming_the_problem(encoder, box, message):
    gt = np.array([[0, 0, 10, 10], box], np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        encoder.encode(gt)
    image = tf.zeros([800, 800, 3], tf.uint8)
    dataset = tf.data.Dataset.from_tensors((image, gt)).map(encoder)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        list(dataset)


def test_bad_arguments():
    with pytest.raises(ValueError, match="negative_iou"):
        rpn_tf.RpnTargetEncoder(positive_iou=0.3, negative_iou=0.7)
    with pytest.raises(ValueError, match="samples_per_image"):
        rpn_tf.RpnTargetEncoder(samples_per_image=0)
    with pytest.raises(ValueError, match="positive_fraction"):
        rpn_tf.RpnTargetEncoder(positive_fraction=1.5)
    with pytest.raises(ValueError, match="box_format"):
        rpn_tf.RpnTargetEncoder(box_format="cxcywh")
    with pytest.raises(ValueError, match="BoxCoder.weights"):
        rpn_tf.RpnTargetEncoder(delta_weights=(1, 1, 0, 1))
    with pytest.raises(ValueError, match="seed"):
        rpn_tf.RpnTargetEncoder(seed=1.5)
    encoder = tiny_encoder()
    with pytest.raises(ValueError, match="4 coordinates"):
        encoder.encode(tf.zeros([3, 5]))
    with pytest.raises(ValueError, match="image must"):
        encoder(tf.zeros([32, 32]), tf.zeros([0, 4]))
    with pytest.raises(KeyError, match="boxes"):
        encoder({"image": tf.zeros([32, 32, 3])})


def test_eager_graph_xla_identical(encoder):
    gt = random_boxes(np.random.default_rng(3), 12)
    eager = encoder.encode(gt)
    graph = tf.function(encoder.encode)(gt)
    xla = tf.function(encoder.encode, jit_compile=True)(gt)
    for outputs in (graph, xla):
        np.testing.assert_array_equal(outputs["rpn_labels"].numpy(), eager["rpn_labels"].numpy())
        np.testing.assert_allclose(outputs["rpn_deltas"].numpy(), eager["rpn_deltas"].numpy(), atol=1e-5)
    for got, want in zip(tf.function(encoder.label_anchors, jit_compile=True)(gt), encoder.label_anchors(gt)):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def make_dataset(num_images=6, image_size=(400, 600)):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 255, size=(num_images, *image_size, 3), dtype=np.uint8)
    # ragged GT: 0 to 5 boxes per image, in the original image's pixels
    boxes = [random_boxes(rng, count, image_size, 16, 200) for count in (0, 1, 2, 3, 4, 5)[:num_images]]
    dataset = tf.data.Dataset.from_generator(
        lambda: zip(images, boxes),
        output_signature=(tf.TensorSpec([*image_size, 3], tf.uint8), tf.TensorSpec([None, 4], tf.float32)))
    return dataset, images, boxes


@pytest.mark.parametrize("policy,scale,valid_size", [("stretch", (2, 800 / 600), (800, 800)),
                                                     ("letterbox", (800 / 600, 800 / 600), (533, 800))])
def test_dataset_map_batch_shapes(policy, scale, valid_size):
    encoder = rpn_tf.RpnTargetEncoder(IMAGE_SIZE, seed=7, resize=policy)
    dataset, originals, boxes = make_dataset()
    batched = dataset.map(encoder, num_parallel_calls=tf.data.AUTOTUNE).batch(4)
    assert batched.element_spec[0].shape.as_list() == [None, 800, 800, 3]
    images, targets = next(iter(batched))
    assert images.shape == (4, 800, 800, 3) and images.dtype == tf.uint8
    assert targets["rpn_labels"].shape == (4, 22500)
    assert targets["rpn_deltas"].shape == (4, 22500, 4)
    assert targets["gt_boxes"].shape == (4, 100, 4)
    assert targets["gt_classes"].shape == (4, 100)
    np.testing.assert_array_equal(targets["num_boxes"].numpy(), [0, 1, 2, 3])
    # Boxes are scaled from 400×600 onto the 800×800 canvas and padded with -1.
    np.testing.assert_allclose(targets["image_scale"].numpy()[0], scale, rtol=2e-3)
    np.testing.assert_array_equal(targets["valid_size"].numpy()[0], valid_size)
    np.testing.assert_allclose(targets["gt_boxes"].numpy()[3, :3],
                               boxes[3] * np.tile(targets["image_scale"].numpy()[3], 2), rtol=1e-5)
    # The padding is zeros; the valid part is the resized image.
    assert not images.numpy()[:, valid_size[0]:].any() and not images.numpy()[:, :, valid_size[1]:].any()
    resized = tf.image.resize(originals[0], valid_size)
    np.testing.assert_allclose(images.numpy()[0, :valid_size[0], :valid_size[1]], np.round(resized.numpy()), atol=1)
    assert np.all(targets["gt_boxes"].numpy()[3, 3:] == -1)
    np.testing.assert_array_equal(targets["gt_classes"].numpy()[3], [1, 1, 1] + [-1] * 97)


def test_dataset_targets_equal_encode_of_resized_boxes(encoder):
    dataset, _, _ = make_dataset(num_images=4)
    for image, targets in dataset.map(encoder):
        # same padded boxes → same seed → same sample
        direct = encoder.encode(targets["gt_boxes"], valid_sizes=targets["valid_size"])
        np.testing.assert_array_equal(direct["rpn_labels"].numpy(), targets["rpn_labels"].numpy())
        np.testing.assert_allclose(direct["rpn_deltas"].numpy(), targets["rpn_deltas"].numpy(), atol=1e-6)


def test_batched_encode_equals_per_example(encoder):
    dataset, _, _ = make_dataset()
    per_example = list(dataset.map(encoder).batch(6))[0][1]
    batched = encoder.encode(per_example["gt_boxes"], valid_sizes=per_example["valid_size"])
    np.testing.assert_array_equal(batched["rpn_labels"].numpy(), per_example["rpn_labels"].numpy())
    np.testing.assert_allclose(batched["rpn_deltas"].numpy(), per_example["rpn_deltas"].numpy(), atol=1e-6)


def test_seeded_passes_identical_unseeded_vary():
    tf.random.set_seed(0)  # a global seed must not make unseeded samples repeat on every pass
    gt = random_boxes(np.random.default_rng(2), 30, min_size=150, max_size=500)
    image = tf.zeros([800, 800, 3], tf.uint8)
    dataset = tf.data.Dataset.from_tensors((image, gt)).repeat(3)
    seeded = dataset.map(rpn_tf.RpnTargetEncoder(seed=11), num_parallel_calls=tf.data.AUTOTUNE)
    first = [t["rpn_labels"].numpy() for _, t in seeded]
    second = [t["rpn_labels"].numpy() for _, t in seeded]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    unseeded = dataset.map(rpn_tf.RpnTargetEncoder())
    samples = [t["rpn_labels"].numpy() for _, t in unseeded] + [t["rpn_labels"].numpy() for _, t in unseeded]
    assert len({s.tobytes() for s in samples}) == len(samples)
    other_seed = [t["rpn_labels"].numpy() for _, t in dataset.map(rpn_tf.RpnTargetEncoder(seed=12))]
    assert other_seed[0].tobytes() != first[0].tobytes()


def test_dict_input_with_classes_and_formats():
    encoder = rpn_tf.RpnTargetEncoder((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(2,)), box_format="xyxy",
                                      normalized_boxes=True, max_boxes=4, resize="stretch")
    image = tf.zeros([32, 16, 1], tf.uint8)  # grayscale, resized to 64×64
    element = {"image": image, "boxes": tf.constant([[0.25, 0.5, 0.75, 1.0]]), "classes": tf.constant([3])}
    out_image, targets = encoder(element)
    assert out_image.shape == (64, 64, 3)
    np.testing.assert_allclose(targets["gt_boxes"].numpy()[0], [32, 16, 64, 48])  # yxyx network pixels
    np.testing.assert_array_equal(targets["gt_classes"].numpy(), [3, -1, -1, -1])
    assert int(targets["num_boxes"]) == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="different lengths"):
        encoder({"image": image, "boxes": tf.constant([[0.25, 0.5, 0.75, 1.0]]), "classes": tf.constant([3, 4])})


def test_padding_rows_in_other_formats():
    anchors = rpn_tf.AnchorConfig(stride=16, scales=(2,))
    encoder = rpn_tf.RpnTargetEncoder((64, 64), anchors, box_format="xywh", seed=1, max_boxes=3)
    padded = tf.constant([[20, 10, 30, 40], [-1, -1, -1, -1]], tf.float32)  # x, y, w, h; then a padding row
    _, targets = encoder(tf.zeros([64, 64, 3]), padded)
    np.testing.assert_array_equal(targets["gt_boxes"].numpy(), [[10, 20, 50, 50], [-1, -1, -1, -1], [-1, -1, -1, -1]])
    _, want = rpn_tf.RpnTargetEncoder((64, 64), anchors, seed=1, max_boxes=3)(tf.zeros([64, 64, 3]),
                                                                             tf.constant([[10, 20, 50, 50.]]))
    np.testing.assert_array_equal(targets["rpn_labels"].numpy(), want["rpn_labels"].numpy())
    assert (want["rpn_labels"].numpy() == 1).sum() >= 1
    # label_anchors / encode take gt_boxes (yxyx canvas pixels) whatever box_format says
    np.testing.assert_array_equal(encoder.label_anchors(targets["gt_boxes"])[0].numpy(),
                                  encoder.label_anchors(tf.constant([[10, 20, 50, 50.]]))[0].numpy())


def test_more_boxes_than_max_boxes_raises():
    encoder = rpn_tf.RpnTargetEncoder((64, 64), max_boxes=2)
    gt = random_boxes(np.random.default_rng(0), 3, (64, 64), 8, 30)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_boxes=2"):
        encoder(tf.zeros([64, 64, 3]), gt)


def test_all_padding_gt_matches_nothing(encoder):
    _, matched = encoder.label_anchors(-np.ones((2, 3, 4), np.float32))
    np.testing.assert_array_equal(matched.numpy(), -1)
    assert np.all(encoder.encode(-np.ones((2, 3, 4), np.float32))["rpn_deltas"].numpy() == 0)
