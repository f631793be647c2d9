"""Every target path gives the pinned targets: per image, batched, sparse — and the sparse loss is the dense one."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
from helpers import require_native

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "golden"))
import make_targets  # noqa: E402

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "..", "golden", "targets.npz"))


@pytest.mark.parametrize("implementation", ["tf", "native"])
def test_dense_targets_equal_the_pinned_ones_bit_for_bit(implementation):
    if implementation == "native":
        require_native()
    current = make_targets.outputs(implementation)
    assert sorted(current) == sorted(GOLDEN.files)
    for key in GOLDEN.files:
        np.testing.assert_array_equal(current[key], GOLDEN[key], err_msg=key)


def sparse_encoder(seed=0, **overrides):
    return rpn_tf.RpnTargetEncoder(make_targets.IMAGE_SIZE, make_targets.ANCHORS, seed=seed,
                                   target_format="sparse", **overrides)


@pytest.mark.parametrize("name", list(make_targets.cases()))
def test_sparse_targets_are_the_dense_ones_at_the_sampled_anchors(name):
    shape, boxes = make_targets.cases()[name]
    _, sparse = sparse_encoder()(tf.zeros(shape, tf.uint8), boxes)
    labels, deltas = GOLDEN[f"0/{name}/labels"], GOLDEN[f"0/{name}/deltas"]
    indices = sparse["rpn_sample_indices"].numpy()
    present = indices >= 0
    assert indices.shape == (256,) and sparse["rpn_sample_deltas"].shape == (256, 4)
    np.testing.assert_array_equal(indices[present], np.flatnonzero(labels >= 0))  # every sampled anchor, in order
    assert np.all(~present[present.sum():])  # padding only at the end
    np.testing.assert_array_equal(sparse["rpn_sample_labels"].numpy()[present], labels[indices[present]])
    np.testing.assert_array_equal(sparse["rpn_sample_labels"].numpy()[~present], -1)
    np.testing.assert_array_equal(sparse["rpn_sample_deltas"].numpy()[present], deltas[indices[present]])
    np.testing.assert_array_equal(sparse["rpn_sample_deltas"].numpy()[~present], 0.0)


def test_batched_sparse_equals_per_image_sparse():
    encoder = sparse_encoder(seed=5)
    # padded as the encoder pads (max_boxes rows), so the content seeds are the same
    padded, sizes, singles = np.full((3, encoder.config.max_boxes, 4), -1, np.float32), [], []
    for index, name in enumerate(["one", "twelve", "letterbox"]):
        shape, boxes = make_targets.cases()[name]
        _, targets = encoder(tf.zeros(shape, tf.uint8), boxes)
        padded[index, :targets["num_boxes"]] = targets["gt_boxes"][:targets["num_boxes"]]
        sizes.append(targets["valid_size"])
        singles.append(targets)
    batched = encoder.encode(padded, valid_sizes=np.stack(sizes))
    for key in ("rpn_sample_indices", "rpn_sample_labels", "rpn_sample_deltas"):
        np.testing.assert_array_equal(batched[key], np.stack([single[key] for single in singles]), err_msg=key)


def test_sparse_loss_and_training_step_equal_the_dense_ones():
    shape, boxes = make_targets.cases()["twelve"]
    image = tf.cast(tf.random.stateless_uniform(shape, [1, 2], maxval=255), tf.uint8)
    dense_encoder = rpn_tf.RpnTargetEncoder(make_targets.IMAGE_SIZE, make_targets.ANCHORS, seed=0)
    batches = {}
    for name, encoder in (("dense", dense_encoder), ("sparse", sparse_encoder())):
        batches[name] = next(iter(tf.data.Dataset.from_tensors((image, boxes)).map(encoder).batch(1)))
    losses = {}
    for name, batch in batches.items():
        keras.utils.set_random_seed(3)  # the same initial weights for both
        model = rpn_tf.RPNModel(make_targets.IMAGE_SIZE, make_targets.ANCHORS, backbone="simple", head_channels=8)
        model.compile(optimizer="sgd")
        losses[name] = model.test_on_batch(*batch, return_dict=True)
        model.train_on_batch(*batch)
        losses[name]["weights"] = model.get_weights()
    for key in ("loss", "rpn_objectness_loss", "rpn_box_loss", "rpn_objectness_accuracy"):
        np.testing.assert_allclose(losses["sparse"][key], losses["dense"][key], rtol=1e-6, err_msg=key)
    for sparse_w, dense_w in zip(losses["sparse"]["weights"], losses["dense"]["weights"]):
        np.testing.assert_allclose(sparse_w, dense_w, rtol=1e-5, atol=1e-7)


def test_target_format_is_validated():
    with pytest.raises(ValueError, match="target_format must be one of"):
        rpn_tf.TargetConfig(target_format="coo")
    with pytest.raises(ValueError, match="needs sampling='balanced'"):
        rpn_tf.TargetConfig(target_format="sparse", sampling="none")
