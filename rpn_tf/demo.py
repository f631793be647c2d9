"""Demo on real data (deepforest's aerial tree crowns, MIT licence).

1. RPN targets for the held-out ``OSBS_029`` image (61 trees): label counts and ``rpn_targets.png`` with the GT
   boxes (green), the sampled positive anchors (red) and a few sampled negatives (blue).
2. Trains an ``RPNModel`` (small backbone, from scratch, CPU) on tiles of the two ``2019_YELL_*`` images, prints
   recall@300 on ``OSBS_029`` before and after, saves ``rpn_deepforest.keras`` and draws the top proposals in
   ``proposals.png``.

Run: ``python -m rpn_tf.demo [--out DIR] [--epochs N]``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import rpn_tf  # noqa: E402
from rpn_tf.data import deepforest  # noqa: E402

from rpn_tf.train_deepforest import TREE_ANCHORS, train  # noqa: E402


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
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (0 skips training)")
    parser.add_argument("--top-n", type=int, default=50, help="proposals drawn in proposals.png")
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
    if args.epochs <= 0:
        return

    print(f"training on YELL tiles for {args.epochs} epochs ...")
    model, report = train(epochs=args.epochs, out_dir=args.out, verbose=2)
    print(f"{report['tiles']} tiles, {report['train_boxes']} boxes; {report['train_seconds']} s; "
          f"final loss {report['final_loss']:.4f}")
    for stage in ("before", "after"):
        recall = report[f"recall_{stage}"]
        print(f"OSBS_029 recall {stage:>6} training: " + ", ".join(f"{k} {v:.3f}" for k, v in recall.items()))
    outputs = model.predict_step(image[None])
    count = min(int(outputs["num_proposals"][0]), args.top_n)
    proposals = outputs["proposal_boxes"][0, :count].numpy()
    path = os.path.join(args.out, "proposals.png")
    with open(path, "wb") as file:
        file.write(draw_boxes(image, [(annotation.boxes, (0, 1, 0)), (proposals, (1, 0, 0))]))
    print(f"wrote {path} (top {count} proposals red, GT green) and {os.path.join(args.out, 'rpn_deepforest.keras')}")


if __name__ == "__main__":
    main()
