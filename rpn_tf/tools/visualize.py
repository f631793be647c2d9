"""Drawing boxes on images (PNG bytes), for the demo and the CLI."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

GREEN, RED, BLUE = (0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)


def draw_boxes(image, box_sets):
    """Draws yxyx pixel boxes on ``image`` (uint8 ``[H, W, 3]``).

    Args:
      box_sets: a list of ``(boxes [n, 4], (r, g, b) in [0, 1])``.

    Returns:
      PNG bytes.
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    canvas = tf.cast(image[None], tf.float32) / 255.0
    for boxes, colour in box_sets:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            continue
        normalized = boxes / np.array([height, width, height, width], np.float32)
        canvas = tf.image.draw_bounding_boxes(canvas, normalized[None], np.array([colour], np.float32))
    return tf.io.encode_png(tf.cast(tf.clip_by_value(canvas[0], 0, 1) * 255, tf.uint8)).numpy()


def write_png(path, png_bytes):
    with open(path, "wb") as file:
        file.write(png_bytes)


def target_picture(image, gt_boxes, anchor_config, max_negatives=None, seed=0):
    """The article's picture: GT boxes (green), sampled positive anchors (red), sampled negatives (blue).

    Args:
      image: uint8 ``[H, W, 3]``; gt_boxes: ``[n, 4]`` yxyx pixels of that image (anchors at its size).
      anchor_config: the ``AnchorConfig`` to label.
      max_negatives: draw at most this many negatives (all when ``None``).

    Returns:
      ``(png_bytes, labels_before_sampling [A], sampled_labels [A])``.
    """
    from rpn_tf.data.encoder import RpnTargetEncoder

    image = np.asarray(image)
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    encoder = RpnTargetEncoder(image.shape[:2], anchor_config, seed=seed, max_boxes=max(len(gt_boxes), 1))
    _, targets = encoder(tf.convert_to_tensor(image), gt_boxes)
    before = encoder.label_anchors(gt_boxes)[0].numpy()
    labels = targets["rpn_labels"].numpy()
    anchors = encoder.anchors.numpy()
    negatives = anchors[labels == 0][:max_negatives]
    png = draw_boxes(image, [(gt_boxes, GREEN), (anchors[labels == 1], RED), (negatives, BLUE)])
    return png, before, labels
