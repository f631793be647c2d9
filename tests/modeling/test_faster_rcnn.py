"""FasterRCNN: a two-stage fit under model.fit, detections in each image's own pixels, stage-two targets against a
NumPy reference, post-processing variants, bad inputs, the .keras round trip."""

import numpy as np
import pytest
import tensorflow as tf

import keras
import rpn_tf
from rpn_tf.config import DetectionConfig
from rpn_tf.modeling.faster_rcnn import FasterRCNN
from rpn_tf.modeling.losses import roi_losses
from rpn_tf.ops.detections import postprocess_detections
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
    model = small_detector(detection_config={"score_threshold": 0.0})  # 5 epochs leave objects' scores low
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
    assert min(history["roi_box_loss"]) > 0.0


def test_detections_are_in_each_images_own_pixels(trained):
    model, _, images = trained
    out = model.predict(images[:2], verbose=0)
    # the same images at twice the size land on the same canvas (nearest ×2 then bilinear ÷2 gives the same
    # pixels): the same detections, their boxes twice as large
    bigger = tf.image.resize(images[:2], (2 * SIZE, 2 * SIZE), method="nearest").numpy()
    big = model.predict(bigger, verbose=0)
    np.testing.assert_allclose(big["image_scale"], 0.5)
    np.testing.assert_array_equal(big["num_detections"], out["num_detections"])
    assert min(out["num_detections"]) >= 3  # something to compare
    for image in range(2):
        count = int(out["num_detections"][image])
        np.testing.assert_allclose(big["detection_boxes"][image, :count], 2 * out["detection_boxes"][image, :count],
                                   atol=1e-3)
        np.testing.assert_allclose(big["detection_scores"][image, :count], out["detection_scores"][image, :count],
                                   atol=1e-6)
        np.testing.assert_array_equal(big["detection_classes"][image, :count],
                                      out["detection_classes"][image, :count])
        assert set(np.unique(out["detection_classes"][image, :count])) <= {1.0, 2.0}


def test_call_and_predict_follow_one_clipping_rule_and_one_dtype(trained):
    model, _, images = trained
    # a letterboxed photo: 64 rows of image, 64 rows of padding on the canvas
    photo = images[:1, ::2]
    out = model.predict(photo, verbose=0)
    canvas, scale, valid_size, _ = (t.numpy() for t in model.to_canvas(tf.constant(photo)))
    np.testing.assert_array_equal(valid_size, [[SIZE / 2, SIZE]])
    called = model(canvas, valid_sizes=valid_size)
    for result in (out, called):
        assert result["num_detections"].dtype == np.float32 and result["detection_classes"].dtype == np.float32
    count = int(called["num_detections"][0])
    assert count >= 3 and int(out["num_detections"][0]) == count
    boxes = called["detection_boxes"].numpy()[0, :count]
    assert boxes[:, 2].max() <= SIZE / 2 + 1e-4  # never in the letterbox padding
    np.testing.assert_allclose(out["detection_boxes"][0, :count] * np.tile(scale[0], 2), boxes, atol=1e-3)
    whole = model(canvas)  # without valid sizes the canvas is the image
    assert whole["detection_boxes"].numpy()[0].max() <= SIZE


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


def test_roi_losses_match_a_numpy_reference():
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(2, 6, 4)).astype(np.float32)  # K = 3
    deltas = rng.normal(size=(2, 6, 3, 4)).astype(np.float32)
    classes = np.array([[2, 0, 3, -1, 1, 0], [0, 0, -1, -1, 3, 2]], np.int32)
    targets = rng.normal(scale=0.3, size=(2, 6, 4)).astype(np.float32)
    beta = 1.0 / 9.0
    classification, box, sampled, correct = (float(v) for v in roi_losses(logits, deltas, classes, targets, beta))
    sampled_mask = classes >= 0
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want_classification = -sum(log_softmax[i, r, classes[i, r]] for i, r in zip(*np.nonzero(sampled_mask)))
    want_box = 0.0
    for i, r in zip(*np.nonzero(classes > 0)):  # the deltas of the ROI's own class only
        difference = np.abs(deltas[i, r, classes[i, r] - 1] - targets[i, r])
        want_box += np.sum(np.where(difference < beta, 0.5 * difference ** 2 / beta, difference - 0.5 * beta))
    assert sampled == sampled_mask.sum() == 9
    assert classification == pytest.approx(want_classification, rel=1e-5)
    assert box == pytest.approx(want_box, rel=1e-5)
    assert correct == float(np.sum((logits.argmax(-1) == classes) & sampled_mask))


def test_batches_without_objects_train_on_background_rois_only():
    images, boxes, classes = squares(4)
    boxes[:], classes[:] = -1.0, -1  # all padding: no GT box anywhere
    model = small_detector(seed=1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    logs = model.train_on_batch(images, {"gt_boxes": boxes, "gt_classes": classes}, return_dict=True)
    assert all(np.isfinite(float(v)) for v in logs.values()), logs
    assert float(logs["roi_box_loss"]) == 0.0 and float(logs["roi_classification_loss"]) > 0.0
    features = model.rpn.features(images)
    proposals = model.rpn.propose(model.rpn.head_outputs(features), training=True)
    samples = model.roi_heads.roi_sampler(proposals["boxes"], boxes, classes, proposals["num_proposals"],
                                          seeds=tf.zeros([4, 2], tf.int64))
    roi_classes = samples["roi_classes"].numpy()
    assert (roi_classes == 0).sum() > 0 and set(np.unique(roi_classes)) <= {0, -1}  # background ROIs only


def test_keras_dict_targets_give_the_losses_of_gt_boxes():
    images, boxes, classes = squares(2)
    xyxy = np.where(boxes >= 0, boxes[..., [1, 0, 3, 2]], -1.0)
    model = small_detector(seed=2, bounding_box_format="xyxy")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = model.seed_generator.state.numpy()
    want = model.test_on_batch(images, {"gt_boxes": boxes, "gt_classes": classes}, return_dict=True)
    for key in ("classes", "labels"):
        model.seed_generator.state.assign(start)  # the same anchor and ROI samples
        logs = model.test_on_batch(images, {"boxes": xyxy, key: classes}, return_dict=True)
        for name in ("loss", "rpn_loss", "roi_classification_loss", "roi_box_loss"):
            assert logs[name] == pytest.approx(want[name], rel=1e-6), (key, name)
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
        model.roi_heads.roi_sampler(nan_proposals, boxes, classes)


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
    total = logs["rpn_loss"][0] + logs["roi_classification_loss"][0] + logs["roi_box_loss"][0]
    assert np.isfinite(logs["loss"][0]) and logs["loss"][0] == pytest.approx(total, rel=1e-4)


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
        return model.step_seeds(3, 1)

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


def test_xla_and_mixed_precision_steps_give_the_same_numbers():
    images, boxes, classes = squares(4)
    targets = {"gt_boxes": boxes, "gt_classes": classes}
    model = small_detector(seed=6)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    start = model.seed_generator.state.numpy()
    want_logs = model.test_on_batch(images, targets, return_dict=True)
    want = model.predict(images, verbose=0)
    assert min(want["num_detections"]) >= 3  # something to compare
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)  # the same weights, compiled
    model.seed_generator.state.assign(start)
    logs = model.test_on_batch(images, targets, return_dict=True)
    for name in ("loss", "rpn_loss", "roi_classification_loss", "roi_box_loss"):
        assert logs[name] == pytest.approx(want_logs[name], rel=1e-3, abs=1e-5), name
    got = model.predict(images, verbose=0)
    assert_same_detections(got, want, score_atol=1e-4, box_atol=1e-2)  # (an XLA training step: test_inputs.py)

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        half = small_detector(seed=6)
        half.set_weights(model.get_weights())
        half.compile(optimizer=keras.optimizers.Adam(1e-3))
        assert np.isfinite(half.train_on_batch(images, targets, return_dict=True)["loss"])
        half.set_weights(model.get_weights())
        out = half.predict(images, verbose=0)
        assert all(value.dtype == np.float32 for value in out.values())
        # float16 features: the RPN's outputs and the class probabilities of the same ROIs agree with float32's to
        # float16 precision (the detections themselves may reorder among near-equal scores)
        ours, theirs = half.rpn(images), model.rpn(images)
        np.testing.assert_allclose(ours["objectness_logits"], theirs["objectness_logits"], atol=0.05, rtol=0.02)
        rois = model.detect(images)["proposal_boxes"]
        probabilities = [tf.nn.softmax(m.roi_heads(m.roi_heads.roi_features(m.rpn.features(images), rois))[0])
                         for m in (half, model)]
        assert probabilities[0].dtype == tf.float32
        np.testing.assert_allclose(probabilities[0], probabilities[1], atol=0.02)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def assert_same_detections(got, want, score_atol, box_atol):
    """The same detections (count, and boxes / scores / classes up to the order of near-equal scores)."""
    np.testing.assert_array_equal(got["num_detections"], want["num_detections"])
    for image in range(len(want["num_detections"])):
        count = int(want["num_detections"][image])

        def rows(out):
            classes = out["detection_classes"][image, :count]
            scores = out["detection_scores"][image, :count]
            order = np.lexsort((np.round(out["detection_boxes"][image, :count, 0], 1), classes))
            return classes[order], scores[order], out["detection_boxes"][image, :count][order]

        (gc, gs, gb), (wc, ws, wb) = rows(got), rows(want)
        np.testing.assert_array_equal(gc, wc)
        np.testing.assert_allclose(gs, ws, atol=score_atol)
        np.testing.assert_allclose(gb, wb, atol=box_atol)


def test_the_second_stage_sends_no_gradient_to_the_rpn():
    images, boxes, classes = squares(2)
    model = small_detector(seed=9)
    targets = model.rpn.encode_targets({"gt_boxes": tf.constant(boxes), "gt_classes": tf.constant(classes)},
                                       seeds=tf.zeros([2, 2], tf.int64))
    with tf.GradientTape(persistent=True) as tape:
        features = model.rpn.features(images, training=True)
        outputs = model.rpn.head_outputs(features)
        proposals = model.rpn.propose({k: tf.stop_gradient(v) for k, v in outputs.items()}, training=True, step=True)
        classification, box, sampled, _ = model.roi_heads.loss_terms(
            features, proposals["boxes"], proposals["num_proposals"], targets["gt_boxes"], targets["gt_classes"],
            tf.zeros([2, 2], tf.int64))
        roi_loss = (classification + box) / sampled
    head = tape.gradient(roi_loss, model.rpn.head.trainable_variables)
    assert all(g is None or float(tf.reduce_max(tf.abs(g))) == 0.0 for g in head)  # proposals carry no gradient
    backbone = tape.gradient(roi_loss, model.rpn.backbone.trainable_variables)
    assert any(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in backbone)  # the features do
    box_head = tape.gradient(roi_loss, model.roi_heads.trainable_variables)
    assert all(g is not None for g in box_head)


def test_validation_uses_the_test_proposal_counts():
    images, boxes, classes = squares(2)
    model = small_detector(seed=10)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    seen = []
    propose = model.rpn.propose

    def recording(*args, **kwargs):
        seen.append(kwargs["training"])
        return propose(*args, **kwargs)

    model.rpn.propose = recording
    model.test_on_batch(images, {"gt_boxes": boxes, "gt_classes": classes})
    assert seen == [False]
    model.train_on_batch(images, {"gt_boxes": boxes, "gt_classes": classes})
    assert seen[0] is False and len(seen) > 1 and all(seen[1:])


def test_training_steps_have_gpu_kernels_for_every_op():
    from tensorflow.python.framework import kernels

    images, boxes, classes = squares(2)
    model = small_detector(seed=12)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    data = (tf.constant(images), {"gt_boxes": tf.constant(boxes), "gt_classes": tf.constant(classes)})
    ops = set()
    for step in (model.train_step, model.test_step):
        graph_def = tf.function(step).get_concrete_function(data).graph.as_graph_def()
        ops |= {node.op for node in graph_def.node}
        for function in graph_def.library.function:
            ops |= {node.op for node in function.node_def}
    # a step compiled without XLA on a GPU copies to the host for any op without a GPU kernel (DEFAULT: a kernel
    # registered for every device)
    def devices(op):
        return {kernel.device_type for kernel in kernels.get_registered_kernels_for_op(op).kernel}

    cpu_only = sorted(op for op in ops if devices(op) and not devices(op) & {"GPU", "DEFAULT"})
    assert len(ops) > 50 and "CombinedNonMaxSuppression" not in ops
    assert cpu_only == [], cpu_only
