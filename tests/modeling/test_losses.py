import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
from rpn_tf.modeling.losses import RpnLoss, decoded_iou, objectness_losses, rpn_loss_sums, smooth_l1
from rpn_tf.ops.sampling import sample_hard_negatives


def random_batch(seed=0, batch=2, anchors=400, positives=10):
    rng = np.random.default_rng(seed)
    labels = rng.choice([-1, 0], size=(batch, anchors), p=[0.3, 0.7]).astype(np.int32)
    labels[:, :positives] = 1
    deltas = rng.normal(size=(batch, anchors, 4)).astype(np.float32)
    logits = rng.normal(size=(batch, anchors)).astype(np.float32)
    predicted = rng.normal(size=(batch, anchors, 4)).astype(np.float32)
    return labels, deltas, logits, predicted


def test_default_loss_is_the_articles_bce_plus_smooth_l1_over_sampled_count():
    labels, deltas, logits, predicted = random_batch()
    loss, (objectness_sum, box_sum, num_sampled, _, count) = RpnLoss()(labels, deltas, logits, predicted)
    assert float(count) == float(num_sampled)
    sampled, positive = labels >= 0, (labels == 1).astype(np.float32)
    probability = 1 / (1 + np.exp(-logits))
    bce = -(positive * np.log(probability) + (1 - positive) * np.log(1 - probability))
    expected_objectness = (bce * sampled).sum()
    difference = np.abs(predicted - deltas)
    expected_box = (np.where(difference < 1 / 9, 0.5 * difference ** 2 * 9, difference - 0.5 / 9).sum(-1)
                    * positive).sum()
    np.testing.assert_allclose(objectness_sum, expected_objectness, rtol=1e-4)
    np.testing.assert_allclose(box_sum, expected_box, rtol=1e-4)
    np.testing.assert_allclose(loss, (expected_objectness + expected_box) / sampled.sum(), rtol=1e-4)


def test_focal_reduces_to_bce_and_down_weights_easy_anchors():
    positive = tf.constant([1.0, 1.0, 0.0, 0.0])
    logits = tf.constant([4.0, -1.0, -4.0, 1.0])  # easy positive, hard positive, easy negative, hard negative
    bce = objectness_losses(positive, logits, "bce")
    np.testing.assert_allclose(objectness_losses(positive, logits, "focal", focal_gamma=0.0, focal_alpha=None), bce,
                               rtol=1e-6)
    focal = objectness_losses(positive, logits, "focal", focal_gamma=2.0, focal_alpha=None).numpy()
    ratio = focal / bce.numpy()
    assert ratio[0] < 1e-3 and ratio[2] < 1e-3 and ratio[1] > 0.5 and ratio[3] > 0.5


@pytest.mark.parametrize("kwargs", [{}, {"objectness_loss": "focal"}, {"negative_sampling": "hard"}])
def test_losses_finite_without_positives(kwargs):
    labels, deltas, logits, predicted = random_batch(positives=0)
    labels[labels == 1] = 0
    loss, (objectness_sum, box_sum, num_sampled, _, _) = RpnLoss(**kwargs)(labels, deltas, logits, predicted)
    assert np.isfinite(loss) and float(box_sum) == 0.0 and float(num_sampled) > 0


def test_hard_negatives_are_the_highest_scored():
    labels = np.array([[1, 1, 0, 0, 0, 0, 0, -1]], np.int32)
    scores = np.array([[0.0, 0.0, 0.1, 0.9, 0.5, 0.8, 0.2, 9.0]], np.float32)
    sampled = sample_hard_negatives(labels, scores, tf.constant([[1, 2]], tf.int64), num_samples=4,
                                    positive_fraction=0.5).numpy()[0]
    np.testing.assert_array_equal(sampled, [1, 1, -1, 0, -1, 0, -1, -1])
    # Fewer positives than the quota: negatives fill up to num_samples.
    sampled = sample_hard_negatives(np.array([[0, 0, 0, 1]], np.int32), np.array([[3.0, 1.0, 2.0, 0.0]]),
                                    tf.constant([[1, 2]], tf.int64), num_samples=3).numpy()[0]
    np.testing.assert_array_equal(sampled, [0, -1, 0, 1])


@pytest.mark.parametrize("options,sampling", [({"objectness_loss": "focal"}, "none"),
                                              ({"negative_sampling": "hard"}, "balanced")])
def test_model_trains_with_each_option(options, sampling):
    model = rpn_tf.RPNModel((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)), backbone="simple",
                            head_channels=8, target_encoder_config={"sampling": sampling, "max_boxes": 4}, **options)
    assert model.target_encoder.config.sampling == "none"  # hard mining samples in the loss from every label
    images = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3)).astype(np.uint8)
    boxes = np.stack([np.array([[8, 8, 40, 30], [30, 34, 60, 62]], np.float32)] * 4)
    dataset = tf.data.Dataset.from_tensor_slices((images, boxes)).map(model.target_encoder).batch(4)
    model.compile(optimizer="adam")
    history = model.fit(dataset, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))
    assert rpn_tf.RPNModel.from_config(model.get_config()).rpn_loss.objectness_loss == model.rpn_loss.objectness_loss


def test_bad_loss_options():
    with pytest.raises(ValueError, match="objectness_loss"):
        RpnLoss(objectness_loss="hinge")
    with pytest.raises(ValueError, match="negative_sampling"):
        RpnLoss(negative_sampling="easy")
    with pytest.raises(ValueError, match="focal_gamma"):
        RpnLoss(focal_gamma=-1)
    with pytest.raises(ValueError, match="objectness_target"):
        RpnLoss(objectness_target="centerness")
    assert smooth_l1(tf.constant(2.0), 0.0) == 2.0 and rpn_loss_sums is not None
    with pytest.raises(ValueError, match="sampling"):
        rpn_tf.TargetConfig(sampling="some")


def test_iou_aware_objectness_targets_the_iou_of_the_predicted_box_with_its_gt_box():
    coder = rpn_tf.BoxCoder()
    anchors = tf.constant([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 45.0]]])
    gt = tf.constant([[[0.0, 0.0, 10.0, 10.0], [0.0, 5.0, 10.0, 15.0], [5.0, 5.0, 25.0, 45.0]]])
    target_deltas = coder.encode(gt, anchors)
    predicted = coder.encode(tf.constant([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [5, 5, 25, 25.0]]]),
                             anchors)
    quality = decoded_iou(predicted, target_deltas, anchors, coder).numpy()[0]
    np.testing.assert_allclose(quality, [1.0, 5.0 * 10 / 150, 0.5], rtol=1e-5)
    # In the loss: positives are pulled towards their IoU, negatives towards 0; the box loss is unchanged.
    labels = tf.constant([[1, 1, 0]])
    logits = tf.constant([[0.3, -0.2, 0.1]])
    soft = rpn_loss_sums(labels, target_deltas, logits, predicted, positive_targets=quality[None])
    hard = rpn_loss_sums(labels, target_deltas, logits, predicted)
    expected = tf.nn.sigmoid_cross_entropy_with_logits(labels=[quality[0], quality[1], 0.0], logits=logits[0])
    np.testing.assert_allclose(soft[0].numpy(), expected.numpy().sum(), rtol=1e-6)
    assert soft[1].numpy() == hard[1].numpy() and soft[0].numpy() != hard[0].numpy()


@pytest.mark.parametrize("target_format", ["dense", "sparse"])
def test_model_trains_with_iou_aware_objectness_and_keeps_it_in_its_config(target_format):
    model = rpn_tf.RPNModel((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)), backbone="simple",
                            head_channels=8, objectness_target="iou",
                            target_encoder_config={"max_boxes": 4, "target_format": target_format, "seed": 1})
    images = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3)).astype(np.uint8)
    boxes = np.stack([np.array([[8, 8, 40, 30], [30, 34, 60, 62]], np.float32)] * 4)
    dataset = tf.data.Dataset.from_tensor_slices((images, boxes)).map(model.target_encoder).batch(4)
    model.compile(optimizer=keras_adam())
    history = model.fit(dataset, epochs=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]
    assert rpn_tf.RPNModel.from_config(model.get_config()).rpn_loss.objectness_target == "iou"


def keras_adam():
    import keras

    return keras.optimizers.Adam(1e-2)
