"""The deepforest recipe's data side: symmetries and scale jitter move boxes with the pixels; a seed repeats a run."""

import numpy as np
import pytest
import tensorflow as tf

from rpn_tf.tools import train_deepforest as recipe

SIZE = recipe.TILE_SIZE


def marked_tile(rng):
    """A dark tile with three bright rectangles and their boxes (plus two padding rows)."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    boxes = -np.ones((5, 4), np.float32)
    for index, (y, x, h, w) in enumerate([(20, 40, 60, 100), (250, 300, 90, 40), (150, 10, 30, 30)]):
        image[y:y + h, x:x + w] = 200 + 20 * index
        boxes[index] = [y, x, y + h, x + w]
    return image, boxes


def bright_boxes(image, boxes):
    """Each non-padding box as the bounding box of the pixels of its colour in ``image``."""
    found = []
    for index, box in enumerate(boxes):
        if box[2] <= box[0]:
            continue
        ys, xs = np.nonzero(np.abs(image[..., 0].astype(int) - (200 + 20 * index)) <= 3)
        found.append([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])
    return np.array(found, np.float32)


def test_the_eight_symmetries_move_the_boxes_with_the_pixels():
    image, boxes = marked_tile(np.random.default_rng(0))
    seen = set()
    for k in range(64):
        out_image, out_boxes = recipe.augment(tf.constant(image), tf.constant(boxes),
                                              tf.constant([k, 7], tf.int64), "dihedral")
        out_boxes = out_boxes.numpy()
        assert (out_boxes[3:] == -1).all()  # padding stays padding
        # colour jitter changes the values, not which pixels are bright: compare masks of the brightest pixels
        grey = out_image.numpy().astype(int).sum(-1)
        mask = grey > grey.min() + 0.5 * (grey.max() - grey.min())
        for box in out_boxes[:3]:
            y1, x1, y2, x2 = box.astype(int)
            assert mask[y1:y2, x1:x2].mean() > 0.99
        assert mask.sum() == sum(int((b[2] - b[0]) * (b[3] - b[1])) for b in out_boxes[:3])
        seen.add(tuple(out_boxes[0].astype(int)))
    assert len(seen) == 8  # all 8 symmetries of the square occur
    flips = {tuple(recipe.augment(tf.constant(image), tf.constant(boxes), tf.constant([k, 7], tf.int64),
                                  "flips")[1].numpy()[0].astype(int)) for k in range(64)}
    assert len(flips) == 4 and flips < seen


def test_scale_jitter_keeps_boxes_on_their_pixels_and_drops_those_mostly_out_of_view():
    image, boxes = marked_tile(np.random.default_rng(0))
    image[..., 0] = np.where(image[..., 0] > 0, image[..., 0], 0)
    for k in range(20):
        out_image, out_boxes = recipe.scale_jitter(tf.constant(image), tf.constant(boxes),
                                                   tf.constant([k, 1], tf.int64), 0.7, 1.5)
        out_image, out_boxes = out_image.numpy(), out_boxes.numpy()
        assert out_image.shape == (SIZE, SIZE, 3)
        kept = out_boxes[:, 2] > out_boxes[:, 0]
        assert (out_boxes[~kept] == -1).all() and (out_boxes[kept] >= 0).all() and (out_boxes[kept] <= SIZE).all()
        for index in np.flatnonzero(kept):
            y1, x1, y2, x2 = np.round(out_boxes[index]).astype(int)
            inner = out_image[y1 + 2:y2 - 2, x1 + 2:x2 - 2, 0].astype(int)
            assert inner.size == 0 or np.abs(inner - (200 + 20 * index)).max() <= 3


@pytest.mark.parametrize("symmetries", ["flips", "dihedral"])
def test_the_same_seed_gives_the_same_batches_and_another_seed_others(symmetries):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (6, SIZE, SIZE, 3), np.uint8)
    boxes = [np.array([[10, 20, 60, 90], [200, 200, 260, 250]], np.float32) + i for i in range(6)]
    model = recipe.build_model("simple", seed=3, recipe="fpn")
    encoder = model.target_encoder

    def first_batches(seed):
        dataset = recipe.training_dataset(images, boxes, encoder, 3, seed, symmetries, (0.8, 1.25))
        return [(b[0].numpy(), b[1]["rpn_labels"].numpy(), b[1]["gt_boxes"].numpy()) for b in dataset.take(2)]

    first, again, other = first_batches(5), first_batches(5), first_batches(6)
    for (image_a, labels_a, gt_a), (image_b, labels_b, gt_b) in zip(first, again):
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(labels_a, labels_b)
        np.testing.assert_array_equal(gt_a, gt_b)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    # the initialisation repeats too
    weights = [w.numpy() for w in recipe.build_model("simple", seed=3, recipe="fpn").weights]
    for mine, theirs in zip(weights, [w.numpy() for w in model.weights]):
        np.testing.assert_array_equal(mine, theirs)
