"""FasterRCNN: a two-stage fit under model.fit, detections in each image's own pixels, stage-two targets against a
NumPy reference, post-processing variants, bad inputs, the .keras round trip."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import rpn_tf
from rpn_tf.config import DetectionConfig
from rpn_tf.modeling.faster_rcnn import FasterRCNN
from rpn_tf.modeling.roi_heads import postprocess_detections, roi_losses
from rpn_tf.ops.box_coder import BoxCoder
from rpn_tf.ops.roi_sampling import RoiSampler

SIZE = 128


def squares(count, seed=0, max_boxes=8):
    """Red (class 1) and blue (class 2) squares on black; padded boxes / classes."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, SIZE, SIZE, 3), np.uint8)
    boxes = -np.ones((count, max_boxes, 4), np.float32)
    classes = -np.ones((count, max_boxes), np.int32)
    for i in range(count):
        for j in range(3):
            side = int(rng.integers(16, 48))
            y, x = rng.integers(0, SIZE - side, 2)
            label = int(rng.integers(1, 3))
            images[i, y:y + side, x:x + side] = (255, 0, 0) if label == 1 else (0, 0, 255)
            boxes[i, j] = [y, x, y + side, x + side]
            classes[i, j] = label
    return images, boxes, classes


def small_detector(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    rpn = rpn_tf.RPNModel((SIZE, SIZE), backbone="simple_fpn",
                          anchor_config=rpn_tf.MultiLevelAnchorConfig.fpn(smallest_size=16.0),
                          target_encoder_config={"max_boxes": 8})
    return FasterRCNN(2, rpn=rpn, representation_size=32, seed=seed, **kwargs)


@pytest.fixture(scope="module")
def trained():
    images, boxes, classes = squares(8)
    model = small_detector()
    model.compile(optimizer=keras.optimizers.Adam(2e-3))
    data = tf.data.Dataset.from_tensor_slices((images, {"gt_boxes": boxes, "gt_classes": classes})).batch(4)
    history = model.fit(data, epochs=5, verbose=0)
    return model, history.history, images


def test_two_stage_fit_lowers_every_loss(trained):
    _, history, _ = trained
    for name in ("loss", "rpn_loss", "roi_classification_loss"):
        assert history[name][-1] < history[name][0], (name, history[name])
    assert all(np.isfinite(v).all() for v in history.values())
    # GT boxes are appended to the proposals, so positives (and a box loss) exist from the first step
    assert min(history["roi_box_loss"]) > 0.0 and 0.0 <= history["roi_accuracy"][-1] <= 1.0


def test_detections_are_in_each_images_own_pixels(trained):
    model, _, images = trained
    canvas = model(images[:2], training=False)
    # the same images at twice the size: boxes scale by 2, within the image
    bigger = tf.image.resize(images[:2], (2 * SIZE, 2 * SIZE), method="nearest").numpy()
    out = model.predict(bigger, verbose=0)
    assert out["detection_boxes"].shape == (2, 100, 4) and out["num_detections"].dtype == np.float32
    count = int(out["num_detections"][0])
    boxes = out["detection_boxes"][0, :count]
    assert (boxes >= 0).all() and (boxes <= 2 * SIZE).all()
    np.testing.assert_allclose(out["image_scale"], 0.5)
    assert set(np.unique(out["detection_classes"][0, :count])) <= {1.0, 2.0}
    assert canvas["detection_boxes"].shape == (2, 100, 4)


def test_keras_round_trip_gives_the_same_detections(trained, tmp_path):
    model, _, images = trained
    path = str(tmp_path / "detector.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, FasterRCNN) and loaded.num_classes == 2
    ours, theirs = model.predict(images[:2], verbose=0), loaded.predict(images[:2], verbose=0)
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], atol=1e-5)


def test_stage_two_targets_match_a_numpy_reference():
    rng = np.random.default_rng(3)
    gt = np.array([[[10, 10, 50, 60], [70, 20, 110, 70], [-1, -1, -1, -1]]], np.float32)
    classes = np.array([[1, 2, -1]], np.int32)
    proposals = np.concatenate([gt[:, :2] + rng.uniform(-6, 6, (1, 2, 4)).astype(np.float32),
                                rng.uniform(0, 100, (1, 40, 2)).astype(np.float32).repeat(2, -1)
                                + np.array([0, 0, 20, 20], np.float32)], axis=1)
    out = RoiSampler(seed=1, num_samples=16, positive_fraction=0.5)(proposals, gt, classes)
    rois, roi_classes, deltas = (out[k].numpy()[0] for k in ("rois", "roi_classes", "roi_deltas"))

    def iou(a, b):
        h = np.maximum(0, np.minimum(a[2], b[2]) - np.maximum(a[0], b[0]))
        w = np.maximum(0, np.minimum(a[3], b[3]) - np.maximum(a[1], b[1]))
        inter = h * w
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    assert (roi_classes > 0).sum() >= 2  # the jittered proposals and the appended GT boxes
    for roi, label, delta in zip(rois, roi_classes, deltas):
        if label < 0:
            continue
        ious = np.array([iou(roi, g) for g in gt[0, :2]])
        if label == 0:
            assert ious.max() < 0.5
            continue
        match = ious.argmax()
        assert ious[match] >= 0.5 and label == classes[0, match]
        g = gt[0, match]
        ha, wa = roi[2] - roi[0], roi[3] - roi[1]
        hg, wg = g[2] - g[0], g[3] - g[1]
        expected = [10 * ((g[0] + g[2]) / 2 - (roi[0] + roi[2]) / 2) / ha,
                    10 * ((g[1] + g[3]) / 2 - (roi[1] + roi[3]) / 2) / wa, 5 * np.log(hg / ha), 5 * np.log(wg / wa)]
        np.testing.assert_allclose(delta, expected, rtol=1e-4, atol=1e-4)


def test_roi_losses_without_any_sampled_roi_are_zero_not_nan():
    logits, deltas = tf.random.normal([2, 4, 3]), tf.random.normal([2, 4, 2, 4])
    classification, box, sampled, _ = roi_losses(logits, deltas, -tf.ones([2, 4], tf.int32), tf.zeros([2, 4, 4]))
    assert float(sampled) == 0 and float(classification) == 0 and float(box) == 0


def test_batches_without_objects_train_with_finite_losses():
    images, boxes, classes = squares(4)
    boxes[:], classes[:] = -1.0, -1  # all padding: no GT box anywhere
    model = small_detector(seed=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    logs = model.train_on_batch(images, {"gt_boxes": boxes, "gt_classes": classes}, return_dict=True)
    assert all(np.isfinite(float(v)) for v in logs.values()), logs


def test_keras_dict_conventions_and_box_formats():
    images, boxes, classes = squares(2)
    xyxy = np.where(boxes >= 0, boxes[..., [1, 0, 3, 2]], -1.0)
    model = small_detector(seed=2, bounding_box_format="xyxy")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    for key in ("classes", "labels"):
        logs = model.train_on_batch(images, {"boxes": xyxy, key: classes}, return_dict=True)
        assert np.isfinite(float(logs["loss"]))
    with pytest.raises(ValueError, match="bounding_box_format"):
        small_detector(bounding_box_format="cxcywh")


def test_bad_targets_are_named():
    images, boxes, classes = squares(2)
    model = small_detector(seed=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    with pytest.raises(ValueError, match="gt_classes"):
        model.train_on_batch(images, {"gt_boxes": boxes}, return_dict=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes=2"):
        model.train_on_batch(images, {"gt_boxes": boxes, "gt_classes": classes * 3}, return_dict=True)
    # 0-based class ids (KerasHub's) would silently train real boxes as background
    model = small_detector(seed=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="below 1 for a real box"):
        model.train_on_batch(images, {"gt_boxes": boxes, "gt_classes": np.where(classes > 0, classes - 1, -1)},
                             return_dict=True)


def test_nan_images_and_nan_proposals_are_named():
    images, boxes, classes = squares(2)
    model = small_detector(seed=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    nan_images = np.full(images.shape, np.nan, np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="images contain NaN"):
        model.train_on_batch(nan_images, {"gt_boxes": boxes, "gt_classes": classes}, return_dict=True)
    nan_proposals = np.full((2, 5, 4), np.nan, np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="proposals contain NaN"):
        model.roi_sampler(nan_proposals, boxes, classes)


@pytest.mark.parametrize("images, error, message", [
    (np.zeros((1, 40, 50, 1), np.uint8), ValueError, "RGB images with 3 channels"),
    (np.zeros((40, 50, 3), np.uint8), ValueError, r"a batch of images \[B, H, W, 3\]"),
    (np.zeros((1, 0, 0, 3), np.uint8), tf.errors.InvalidArgumentError, "zero height or width"),
    (np.full((1, 20, 20, 3), np.nan, np.float32), tf.errors.InvalidArgumentError, "NaN or Inf"),
])
def test_bad_images_for_predict_are_named(trained, images, error, message):
    model, _, _ = trained  # it has predicted before: Keras traces the next steps with relaxed shapes
    with pytest.raises(error, match=message):
        model.predict(images, verbose=0)
    with pytest.raises(error, match=message):
        model.rpn.predict(images, verbose=0)


def test_padded_and_combined_post_processing_agree():
    rng = np.random.default_rng(5)
    rois = rng.uniform(0, 80, (2, 30, 2)).astype(np.float32)
    rois = np.concatenate([rois, rois + rng.uniform(8, 40, (2, 30, 2)).astype(np.float32)], -1)
    logits = tf.constant(rng.normal(size=(2, 30, 4)) * 2, tf.float32)
    deltas = tf.constant(rng.normal(size=(2, 30, 3, 4)) * 0.5, tf.float32)
    config = DetectionConfig(score_threshold=0.1, nms_iou=0.5, max_detections=20, max_detections_per_class=10)
    args = (tf.constant(rois), tf.constant([30, 25]), logits, deltas, BoxCoder((10.0, 10.0, 5.0, 5.0)),
            tf.constant([[120.0, 120.0], [100.0, 110.0]]), config)
    combined = postprocess_detections(*args, nms="combined")
    padded = tf.function(lambda: postprocess_detections(*args, nms="padded"), jit_compile=True)()
    np.testing.assert_array_equal(combined["num_detections"], padded["num_detections"])
    for image in range(2):
        count = int(combined["num_detections"][image])
        # the same set of (class, box, score) — order may differ between equal scores
        def rows(out):
            classes = out["detection_classes"][image, :count].numpy()
            scores = out["detection_scores"][image, :count].numpy()
            order = np.lexsort((-scores, classes))
            return classes[order], scores[order], out["detection_boxes"][image, :count].numpy()[order]
        for ours, theirs in zip(rows(combined), rows(padded)):
            np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_mirrored_strategy_fit_and_the_tensorflow_native_loop(tmp_path, mirrored_strategy):
    from rpn_tf.modeling.distributed import DistributedTrainer

    images, boxes, classes = squares(4)
    data = tf.data.Dataset.from_tensor_slices((images, {"gt_boxes": boxes, "gt_classes": classes})).batch(
        4, drop_remainder=True)
    strategy = mirrored_strategy
    with strategy.scope():
        model = small_detector(seed=5)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(data, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # both stages are normalized by the global batch's counts (as RpnLoss): the step's loss is the sum of the
    # logged terms, as on one device (a per-replica ROI normalizer broke this)
    logs = history.history
    total = logs["rpn_loss"][0] + logs["roi_classification_loss"][0] + logs["roi_box_loss"][0]
    assert logs["loss"][0] == pytest.approx(total, rel=1e-4)
    trainer = DistributedTrainer(model, strategy, str(tmp_path / "checkpoints"), verbose=False)
    logs = trainer.fit(data, epochs=1, steps_per_epoch=1)
    assert np.isfinite(logs["loss"][-1]) and logs["roi_accuracy"][-1] >= 0


def test_logged_loss_is_the_sum_of_its_terms_on_one_device():
    images, boxes, classes = squares(4)
    model = small_detector(seed=7, rpn_loss_weight=0.5)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    logs = model.train_on_batch(images, {"gt_boxes": boxes, "gt_classes": classes}, return_dict=True)
    total = 0.5 * logs["rpn_loss"] + logs["roi_classification_loss"] + logs["roi_box_loss"]
    assert float(logs["loss"]) == pytest.approx(float(total), rel=1e-4)


def test_replicas_draw_different_roi_samples(mirrored_strategy):
    with mirrored_strategy.scope():  # as under fit: the seed generator's state is mirrored, one value per replica
        model = small_detector(seed=8)

    @tf.function
    def seeds():
        return model._sampling_seeds(3)

    per_replica = mirrored_strategy.experimental_local_results(mirrored_strategy.run(seeds))
    assert len(per_replica) == 2 and not np.array_equal(per_replica[0].numpy(), per_replica[1].numpy())


def test_degenerate_boxes_are_never_detections():
    rois = tf.constant([[[10.0, 10.0, 10.0, 40.0], [10.0, 10.0, 40.0, 40.0]]])  # zero height, then a square
    logits = tf.constant([[[0.0, 5.0], [0.0, 5.0]]])
    deltas = tf.zeros([1, 2, 1, 4])
    out = postprocess_detections(rois, tf.constant([2]), logits, deltas, BoxCoder((10.0, 10.0, 5.0, 5.0)),
                                 tf.constant([[64.0, 64.0]]), DetectionConfig())
    assert int(out["num_detections"][0]) == 1
    np.testing.assert_allclose(out["detection_boxes"][0, 0], [10, 10, 40, 40], atol=1e-4)
    with pytest.raises(ValueError, match="min_size"):
        DetectionConfig(min_size=-1)


def test_xla_and_mixed_precision_steps():
    images, boxes, classes = squares(4)
    targets = {"gt_boxes": boxes, "gt_classes": classes}
    model = small_detector(seed=6)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    assert model._proposal_config().nms == "padded"  # XLA-compilable proposals and detections
    assert np.isfinite(model.train_on_batch(images, targets, return_dict=True)["loss"])
    assert model.predict(images, verbose=0)["detection_boxes"].shape == (4, 100, 4)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = small_detector(seed=6)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        assert np.isfinite(model.train_on_batch(images, targets, return_dict=True)["loss"])
        out = model.predict(images, verbose=0)
        assert all(value.dtype == np.float32 for value in out.values())
    finally:
        keras.mixed_precision.set_global_policy(previous)
