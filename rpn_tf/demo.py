"""Demo on real data: RPN targets for deepforest's OSBS_029 aerial image (61 tree crowns).

Run: ``python -m rpn_tf.demo [--out DIR]``. Prints the label counts and writes ``rpn_targets.png`` with the
GT boxes (green), the sampled positive anchors (red) and a few sampled negatives (blue).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import rpn_tf  # noqa: E402
from rpn_tf.data import deepforest  # noqa: E402

# Tree crowns in these images are 8–107 px across: stride 16 with anchors of 16, 32 and 64 px.
TREE_ANCHORS = rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0, 4.0), ratios=(0.5, 1.0, 2.0))


def draw_boxes(image, box_sets):
    """``image`` uint8 [H, W, 3]; ``box_sets``: list of (yxyx pixel boxes, RGB colour). Returns uint8 PNG bytes."""
    height, width = image.shape[:2]
    canvas = tf.cast(image[None], tf.float32) / 255.0
    for boxes, colour in box_sets:
        if len(boxes) == 0:
            continue
        normalized = np.asarray(boxes, np.float32) / [height, width, height, width]
        canvas = tf.image.draw_bounding_boxes(canvas, normalized[None], np.array([colour], np.float32))
    return tf.io.encode_png(tf.cast(tf.clip_by_value(canvas[0], 0, 1) * 255, tf.uint8)).numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_output", help="folder for the PNG (default: demo_output)")
    args = parser.parse_args(argv)

    image, annotation = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    encoder = rpn_tf.RpnTargetEncoder(image.shape[:2], TREE_ANCHORS, seed=0)
    dataset = tf.data.Dataset.from_tensors((image, annotation.boxes)).map(encoder)
    _, targets = next(iter(dataset))
    labels_before, _ = encoder.label_anchors(annotation.boxes)
    labels = targets["rpn_labels"].numpy()
    anchors = encoder.anchors.numpy()
    print(f"image {deepforest.EVAL_IMAGE}: {image.shape[1]}x{image.shape[0]} px, {len(annotation.boxes)} trees, "
          f"{encoder.num_anchors} anchors")
    before = labels_before.numpy()
    print(f"before sampling: {(before == 1).sum()} positive, {(before == 0).sum()} negative, "
          f"{(before == -1).sum()} ignored")
    print(f"sampled: {(labels == 1).sum()} positive, {(labels == 0).sum()} negative")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "rpn_targets.png")
    png = draw_boxes(image, [(annotation.boxes, (0, 1, 0)), (anchors[labels == 1], (1, 0, 0)),
                             (anchors[labels == 0][:20], (0, 0, 1))])
    with open(path, "wb") as file:
        file.write(png)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
