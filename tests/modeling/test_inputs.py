"""The models' input boundary (``modeling/inputs.py``): boxes are read in their format exactly once, whatever the
path (the tf.data encoder's tuple or dict elements, KerasHub-style ``{"boxes", "classes"}`` targets, in-step
labelling), and the checks of a batch hold when the steps are XLA-compiled."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import rpn_tf
from rpn_tf.modeling.faster_rcnn import FasterRCNN

SIZE = 128
FORMATS = ("yxyx", "xyxy", "xywh", "rel_yxyx", "rel_xyxy", "rel_xywh")


def scene(count=2, max_boxes=6, seed=0):
    """Images with squares and their yxyx boxes (integer pixels: every format converts exactly), padded with -1."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, SIZE, SIZE, 3), np.uint8)
    boxes = -np.ones((count, max_boxes, 4), np.float32)
    classes = -np.ones((count, max_boxes), np.int32)
    for i in range(count):
        for j in range(3):
            height, width = (int(v) for v in rng.integers(16, 56, 2))  # not square: a swapped x / y shows
            y, x = int(rng.integers(0, SIZE - height)), int(rng.integers(0, SIZE - width))
            images[i, y:y + height, x:x + width] = (200, 40 * j, 90)
            boxes[i, j] = [y, x, y + height, x + width]
            classes[i, j] = 1 + j % 2
    return images, boxes, classes


def in_format(boxes, bounding_box_format):
    """yxyx pixel boxes ``[..., 4]`` (padding rows -1 kept) in ``bounding_box_format``, on the ``SIZE`` canvas."""
    base, normalized = rpn_tf.box_ops.parse_bounding_box_format(bounding_box_format)
    y1, x1, y2, x2 = np.moveaxis(boxes, -1, 0)
    out = {"yxyx": [y1, x1, y2, x2], "xyxy": [x1, y1, x2, y2], "xywh": [x1, y1, x2 - x1, y2 - y1]}[base]
    out = np.stack(out, -1)
    if normalized:
        out = out / SIZE
    return np.where(boxes[..., :1] == -1, -1.0, out).astype(np.float32)


def small_rpn(**kwargs):
    keras.utils.set_random_seed(1)
    return rpn_tf.RPNModel((SIZE, SIZE), backbone="simple", anchor_config=rpn_tf.AnchorConfig(stride=16,
                                                                                               scales=(1.5, 3.0)),
                           target_encoder_config={"max_boxes": 6, "seed": 3, **kwargs.pop("targets", {})},
                           proposal_config={"min_size": 0.0, "post_nms_top_k_test": 50}, recall_top_n=50, **kwargs)


@pytest.mark.parametrize("bounding_box_format", FORMATS)
def test_every_format_gives_the_labels_deltas_losses_and_recall_of_yxyx(bounding_box_format):
    images, boxes, classes = scene()
    base, normalized = rpn_tf.box_ops.parse_bounding_box_format(bounding_box_format)
    reference = small_rpn()
    reference.compile(optimizer="adam")
    want = reference.encode_targets({"gt_boxes": tf.constant(boxes)})
    want_logs = reference.test_on_batch(images, {"gt_boxes": boxes}, return_dict=True)
    assert int(np.sum(want["rpn_labels"].numpy() == 1)) >= 6  # something to compare

    # the dict path: KerasHub's {"boxes", "classes"} in bounding_box_format, read once at the model's boundary
    model = small_rpn(bounding_box_format=bounding_box_format)
    model.set_weights(reference.get_weights())
    model.compile(optimizer="adam")
    _, targets = model.check_batch((images, {"boxes": in_format(boxes, bounding_box_format), "classes": classes}))
    np.testing.assert_array_equal(targets["gt_boxes"].numpy(), boxes)
    got = model.encode_targets(targets)
    np.testing.assert_array_equal(got["rpn_labels"].numpy(), want["rpn_labels"].numpy())
    np.testing.assert_allclose(got["rpn_deltas"].numpy(), want["rpn_deltas"].numpy(), atol=1e-6)
    logs = model.test_on_batch(images, {"boxes": in_format(boxes, bounding_box_format), "classes": classes},
                               return_dict=True)
    for key in ("loss", "rpn_box_loss", "recall@50_iou0.5", "ar@50"):
        assert logs[key] == pytest.approx(want_logs[key], abs=1e-6), key

    # the tuple path: (image, boxes) elements in the encoder's box_format → gt_boxes (yxyx canvas pixels) → a model
    # whose own encoder is configured with that format labels in the step without reading the format again
    encoder_model = small_rpn(targets={"box_format": base, "normalized_boxes": normalized})
    encoder_model.set_weights(reference.get_weights())
    encoder_model.compile(optimizer="adam")
    elements = tf.data.Dataset.from_tensor_slices((images, in_format(boxes, bounding_box_format)))
    dataset = elements.map(encoder_model.target_encoder)  # rows of -1 are padding in every format
    encoded = next(iter(dataset.batch(2)))[1]
    np.testing.assert_allclose(encoded["gt_boxes"].numpy(), boxes, atol=1e-4)
    np.testing.assert_array_equal(encoded["rpn_labels"].numpy(), want["rpn_labels"].numpy())
    in_step = encoder_model.encode_targets({"gt_boxes": encoded["gt_boxes"]})
    np.testing.assert_array_equal(in_step["rpn_labels"].numpy(), want["rpn_labels"].numpy())
    logs = encoder_model.test_on_batch(images, {"gt_boxes": encoded["gt_boxes"]}, return_dict=True)
    for key in ("loss", "recall@50_iou0.5"):
        assert logs[key] == pytest.approx(want_logs[key], abs=1e-5), key


def test_the_dict_element_path_of_the_encoder_reads_each_format_once():
    images, boxes, _ = scene(count=1)
    real = boxes[0][boxes[0, :, 0] >= 0]
    anchors = rpn_tf.AnchorConfig(stride=16, scales=(1.5, 3.0))
    want = rpn_tf.RpnTargetEncoder((SIZE, SIZE), anchors, seed=5, max_boxes=6)(images[0], real)[1]
    assert int(np.sum(want["rpn_labels"].numpy() == 1)) >= 3
    for bounding_box_format in FORMATS[1:]:
        base, normalized = rpn_tf.box_ops.parse_bounding_box_format(bounding_box_format)
        encoder = rpn_tf.RpnTargetEncoder((SIZE, SIZE), anchors, seed=5, max_boxes=6, box_format=base,
                                          normalized_boxes=normalized)
        _, got = encoder({"image": images[0], "boxes": in_format(real, bounding_box_format)})
        np.testing.assert_allclose(got["gt_boxes"].numpy(), want["gt_boxes"].numpy(), atol=1e-4)
        np.testing.assert_array_equal(got["rpn_labels"].numpy(), want["rpn_labels"].numpy())
        # encode() takes gt_boxes — yxyx canvas pixels — whatever the encoder's box_format
        np.testing.assert_array_equal(encoder.encode(want["gt_boxes"], seeds=[1, 2])["rpn_labels"].numpy(),
                                      encoder.encode(got["gt_boxes"], seeds=[1, 2])["rpn_labels"].numpy())


def small_detector(jit_compile=False):
    keras.utils.set_random_seed(2)
    rpn = rpn_tf.RPNModel((SIZE, SIZE), backbone="simple_fpn",
                          anchor_config=rpn_tf.MultiLevelAnchorConfig.fpn(smallest_size=16.0),
                          target_encoder_config={"max_boxes": 6})
    model = FasterRCNN(2, rpn=rpn, representation_size=32, seed=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=jit_compile)
    return model


@pytest.fixture(scope="module")
def xla_detector():
    model = small_detector(jit_compile=True)
    assert model.jit_compile
    return model


BAD_BATCHES = {
    "class 0 on a real box": (lambda i, b, c: (i, b, np.where(c == 1, 0, c)), "below 1 for a real box"),
    "class above K": (lambda i, b, c: (i, b, np.where(c == 2, 3, c)), "above num_classes=2"),
    "NaN image": (lambda i, b, c: (np.where(i > 100, np.nan, i).astype(np.float32), b, c), "NaN or Inf"),
    "NaN box": (lambda i, b, c: (i, np.where(b == b.max(), np.nan, b), c), "gt_boxes contain NaN"),
    "inverted box": (lambda i, b, c: (i, np.concatenate([b[..., 2:], b[..., :2]], -1) * (b >= 0) - (b < 0), c),
                     "inverted boxes"),
}


@pytest.mark.parametrize("problem", sorted(BAD_BATCHES))
def test_checks_hold_under_xla_in_fit_train_on_batch_and_evaluate(xla_detector, problem):
    change, message = BAD_BATCHES[problem]
    images, boxes, classes = change(*scene())
    targets = {"gt_boxes": boxes, "gt_classes": classes}
    dataset = tf.data.Dataset.from_tensor_slices((images, targets)).batch(2)
    for run in (lambda: xla_detector.fit(dataset, epochs=1, verbose=0),
                lambda: xla_detector.train_on_batch(images, targets),
                lambda: xla_detector.fit(images, targets, batch_size=2, epochs=1, verbose=0),
                lambda: xla_detector.evaluate(dataset, verbose=0)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            run()


def test_keras_hub_targets_with_class_zero_fail_under_xla_and_good_batches_train(xla_detector):
    images, boxes, classes = scene()
    with pytest.raises(tf.errors.InvalidArgumentError, match="below 1 for a real box"):
        xla_detector.train_on_batch(images, {"boxes": boxes, "labels": np.where(classes > 0, classes - 1, -1)})
    logs = xla_detector.train_on_batch(images, {"boxes": boxes, "labels": classes}, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["roi_classification_loss"] > 0


def test_predict_names_nan_images_under_xla(xla_detector):
    images = np.full((1, 40, 60, 3), np.nan, np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        xla_detector.predict(images, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        xla_detector.predict(tf.data.Dataset.from_tensors(images), verbose=0)


def test_a_custom_loop_reads_batches_through_check_batch():
    model = small_detector()
    images, boxes, classes = scene()
    dataset = tf.data.Dataset.from_tensor_slices((images, {"boxes": boxes, "classes": np.where(classes == 1, 0,
                                                                                             classes)})).batch(2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="below 1 for a real box"):
        next(iter(dataset.map(lambda x, y: model.check_batch((x, y)))))


class BatchesOf(keras.utils.PyDataset):
    """A user's PyDataset with a per-epoch hook of its own."""

    def __init__(self, batches):
        super().__init__()
        self.batches, self.epochs_begun = batches, 0

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]

    def on_epoch_begin(self):
        self.epochs_begun += 1


def test_every_kind_of_input_is_checked_on_the_host_under_xla(xla_detector):
    images, boxes, classes = scene()
    bad = {"gt_boxes": boxes, "gt_classes": np.where(classes == 1, 0, classes)}
    good = {"gt_boxes": boxes, "gt_classes": classes}
    message = "below 1 for a real box"
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):  # a Python generator
        xla_detector.fit((batch for batch in [(images, bad)]), epochs=1, steps_per_epoch=1, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):  # a PyDataset
        xla_detector.fit(BatchesOf([(images, bad)]), epochs=1, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):  # a dataset with sample weights
        xla_detector.fit(tf.data.Dataset.from_tensors((images, bad, np.ones(2, np.float32))), epochs=1, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):  # validation data as a tuple
        xla_detector.fit(images, good, validation_data=(images, bad), epochs=1, verbose=0)
    from rpn_tf.modeling.inputs import checked_inputs

    users = BatchesOf([(images, good)])
    wrapped, _ = checked_inputs(users, None, xla_detector.check_batch)
    wrapped.on_epoch_begin()  # the user's per-epoch hook still runs
    assert users.epochs_begun == 1 and len(wrapped) == 1
    np.testing.assert_array_equal(wrapped[0][1]["gt_classes"], classes)


def test_unrecognised_inputs_under_xla_are_named_in_a_warning(xla_detector):
    from rpn_tf.modeling.inputs import checked_inputs

    unknown = [np.zeros((1, 8, 8, 3), np.float32)]  # a list: not a kind the host checks
    with pytest.warns(UserWarning, match="not checked on the host"):
        checked_inputs(unknown, None, xla_detector.check_images, compiled=True)
