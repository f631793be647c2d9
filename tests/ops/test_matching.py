import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
from helpers import IMAGE_SIZE, random_boxes, tiny_encoder
from reference import anchors_np, deltas_np, label_np


def test_tied_best_anchors_are_all_forced_positive():
    encoder = tiny_encoder()
    # The GT box straddles anchors 0 and 1 equally: IoU 128 / 384 = 1/3 with each, far below 0.7.
    labels, matched = encoder.label_anchors(tf.constant([[0, 8, 16, 24.]]))
    np.testing.assert_array_equal(labels.numpy(), [1, 1, 0, 0])
    np.testing.assert_array_equal(matched.numpy(), [0, 0, 0, 0])


def test_forced_anchor_keeps_its_own_argmax_gt():
    encoder = tiny_encoder()
    # GT 1's best anchor is anchor 0 (IoU 0.6), but anchor 0 matches GT 0 exactly (IoU 1).
    labels, matched = encoder.label_anchors(tf.constant([[0, 0, 16, 16.], [0, 4, 16, 20.]]))
    np.testing.assert_array_equal(labels.numpy(), [1, 0, 0, 0])
    assert matched.numpy()[0] == 0


def test_no_forced_positive_without_overlap_and_middle_band_ignored():
    encoder = tiny_encoder()
    labels, _ = encoder.label_anchors(tf.constant([[100, 100, 120, 120.]]))  # overlaps nothing
    np.testing.assert_array_equal(labels.numpy(), [0, 0, 0, 0])
    # IoU 0.5 with anchor 0 → forced positive; anchor 3's IoU with this box is 0 → negative.
    # A second GT box gives anchor 1 IoU 0.5 too, but its best anchor is anchor 1 itself → positive.
    labels, _ = tiny_encoder(positive_iou=0.9, negative_iou=0.4).label_anchors(
        tf.constant([[0, 0, 16, 8.], [0, 16, 16, 24.], [16, 0, 32, 6.], [16, 0, 32, 7.]]))
    # Anchor 2 has IoU 6/16=0.375 (box 2) and 7/16=0.4375 (box 3): box 3's best → 1.
    np.testing.assert_array_equal(labels.numpy(), [1, 1, 1, 0])


def test_threshold_boundaries_are_inclusive_positive_exclusive_negative():
    encoder = tiny_encoder(positive_iou=0.5, negative_iou=0.25)
    anchors_gt = tf.constant([[0, 0, 16, 8.]])  # IoU exactly 0.5 with anchor 0
    labels, _ = encoder.label_anchors(anchors_gt)
    assert labels.numpy()[0] == 1
    # IoU exactly 0.25 with anchor 0 (and 0.25 is its best, so it is forced positive) — use a second box to take
    # the "best anchor" role so anchor 0 is judged by thresholds alone.
    encoder = tiny_encoder(positive_iou=0.9, negative_iou=0.25)
    labels, _ = encoder.label_anchors(tf.constant([[0, 0, 16, 4.], [0, 0, 16, 4.5]]))
    # Box 0: IoU 0.25 with anchor 0 (its best → forced). Check the exclusive negative bound on anchor 0 alone:
    assert labels.numpy()[0] == 1
    labels, _ = tiny_encoder(positive_iou=0.9, negative_iou=0.25, allowed_border=-1).label_anchors(
        tf.constant([[0, 16, 16, 32.], [0, 0, 16, 4.]]))
    assert labels.numpy()[1] == 1  # exact match, IoU 1


def test_cross_boundary_anchors_ignored_unless_border_negative():
    inside_only = rpn_tf.RpnTargetEncoder(IMAGE_SIZE)
    labels, matched = inside_only.label_anchors(tf.zeros([0, 4]))
    anchors = inside_only.anchors.numpy()
    outside = ((anchors[:, :2] < 0) | (anchors[:, 2:] > 800)).any(axis=1)
    assert outside.sum() == 22500 - 8940  # the article's count of valid anchors is 8 940
    np.testing.assert_array_equal(labels.numpy()[outside], -1)
    np.testing.assert_array_equal(labels.numpy()[~outside], 0)
    np.testing.assert_array_equal(matched.numpy(), -1)
    keep_all = rpn_tf.RpnTargetEncoder(IMAGE_SIZE, allowed_border=-1)
    np.testing.assert_array_equal(keep_all.label_anchors(tf.zeros([0, 4]))[0].numpy(), 0)


@pytest.mark.parametrize("num_boxes", [1, 3, 10, 40])
def test_labels_and_deltas_agree_with_numpy_reference(encoder, num_boxes):
    rng = np.random.default_rng(num_boxes)
    anchors = anchors_np(IMAGE_SIZE)
    for _ in range(3):
        gt = random_boxes(rng, num_boxes)
        expected_labels, expected_matched = label_np(anchors, gt, IMAGE_SIZE)
        labels, matched = encoder.label_anchors(gt)
        np.testing.assert_array_equal(labels.numpy(), expected_labels)
        np.testing.assert_array_equal(matched.numpy(), expected_matched)
        deltas = encoder.encode(gt)["rpn_deltas"].numpy()
        np.testing.assert_allclose(deltas, deltas_np(anchors, gt, expected_matched), atol=2e-4)


@pytest.mark.parametrize("allowed_border", [0.0, -1.0])
def test_padded_image_labels_like_the_unpadded_image(allowed_border):
    """A 400×200 image letterboxed into 400×400 labels exactly like the same image at 400×200 (NumPy reference),
    anchor by anchor over the valid half; every anchor of the padding is ignored."""
    rng = np.random.default_rng(int(allowed_border) + 7)
    gt = random_boxes(rng, 6, image_size=(400, 200), min_size=20, max_size=180)
    canvas = rpn_tf.RpnTargetEncoder((400, 400), allowed_border=allowed_border, resize="letterbox", seed=0)
    image = np.zeros((400, 200, 3), np.uint8)
    _, targets = canvas(image, gt)
    np.testing.assert_array_equal(targets["valid_size"], [400, 200])
    labels, matched = canvas.label_anchors(gt, valid_sizes=targets["valid_size"])
    expected, expected_matched = label_np(anchors_np((400, 200)), gt, (400, 200), allowed_border=allowed_border)
    # Canvas anchors: 25 × 25 cells × 9; the 400×200 image has 25 × 13 cells × 9, at the same positions.
    labels = labels.numpy().reshape(25, 25, 9)
    matched = matched.numpy().reshape(25, 25, 9)
    np.testing.assert_array_equal(labels[:, :13].reshape(-1), expected)
    np.testing.assert_array_equal(matched[:, :13].reshape(-1), expected_matched)
    assert np.all(labels[:, 13:] == -1) and np.all(matched[:, 13:] == -1)
    # The sampled targets never use an anchor of the padding.
    sampled = targets["rpn_labels"].numpy().reshape(25, 25, 9)
    assert np.all(sampled[:, 13:] == -1) and (sampled == 1).sum() > 0


def padded_batch(rng, counts, max_boxes=100):
    """A batch padded to ``max_boxes`` rows with real boxes of ``counts`` per image (with duplicates: ties), and a
    zero-area row in the middle (not usable)."""
    boxes = -np.ones((len(counts), max_boxes, 4), np.float32)
    for image, count in enumerate(counts):
        if count == 0:
            continue
        real = random_boxes(rng, count)
        real[1] = real[0]  # a duplicate GT box: the first keeps the tie
        real[count // 2, 2:] = real[count // 2, :2]  # a zero-area box among real ones
        boxes[image, :count] = real
    return boxes


@pytest.mark.parametrize("valid_sizes", [None, [[600.0, 500.0], [800.0, 800.0], [400.0, 800.0]]])
def test_a_padded_batch_matches_in_chunks_exactly_as_one_matrix(valid_sizes, monkeypatch):
    from rpn_tf.ops import matching

    rng = np.random.default_rng(4)
    chunk = matching.GT_CHUNK
    counts = (3 * chunk - 5, chunk + 2, 0)
    boxes = padded_batch(rng, counts)
    boxes[0, chunk + 1] = boxes[0, 0]  # a tie across chunks: the earlier GT keeps it
    encoder = rpn_tf.RpnTargetEncoder(IMAGE_SIZE, rpn_tf.AnchorConfig(stride=16, scales=(2.0, 4.0)))
    matcher = encoder.assigner.matcher
    sizes = None if valid_sizes is None else tf.constant(valid_sizes)
    chunked = matcher.match_inside(tf.constant(boxes), valid_sizes=sizes)  # static G = 100 > GT_CHUNK: chunks
    monkeypatch.setattr(matching, "GT_CHUNK", 1000)  # the reference: one IoU matrix of every row
    whole = matcher.match_inside(tf.constant(boxes), valid_sizes=sizes)
    for got, want in zip(chunked, whole):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    labels, matched, _ = (t.numpy() for t in chunked)
    assert (labels[:2] == 1).sum() > 10 and np.all(labels[2] != 1)  # something to compare; no GT: no positive
    assert matched[:2].max() >= chunk  # matches beyond the first chunk
    assert not np.any(matched[0] == chunk + 1)  # the duplicate of GT 0 never wins a tie


def test_in_step_labelling_compiles_once_under_xla_without_a_matrix_per_padded_row():
    rng = np.random.default_rng(5)
    encoder = rpn_tf.RpnTargetEncoder(IMAGE_SIZE, rpn_tf.AnchorConfig(stride=16, scales=(2.0, 4.0)))
    num_inside = encoder.assigner.matcher.num_inside
    encode = tf.function(lambda boxes, seeds: encoder.encode(boxes, seeds=seeds, validate=False)["rpn_labels"],
                         jit_compile=True)
    boxes = tf.constant(padded_batch(rng, (20, 7)))
    seeds = tf.constant([[1, 2], [3, 4]], tf.int64)
    hlo = encode.experimental_get_compiler_ir(boxes, seeds)(stage="hlo")
    entry = hlo[hlo.index("ENTRY"):]
    # the boxes are an argument of the compiled program (a value-dependent shape would make XLA compile one program
    # per batch), and no IoU of every padded row × every anchor is built
    assert "f32[2,100,4]" in entry.split("\n")[0]
    assert f"[2,100,{num_inside}]" not in hlo
    np.testing.assert_array_equal(encode(boxes, seeds).numpy(), encoder.encode(boxes, seeds=seeds)["rpn_labels"])
