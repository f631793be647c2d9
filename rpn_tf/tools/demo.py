"""The one-command demo on real data (deepforest's aerial tree crowns, MIT licence).

1. RPN targets for the held-out ``OSBS_029`` image (61 trees): label counts and ``rpn_targets.png`` with the GT
   boxes (green), the sampled positive anchors (red) and a few sampled negatives (blue) — the article's picture.
2. Trains an ``RPNModel`` (the deepforest recipe: small network from scratch, 2 CPU cores, see
   ``docs/recipes.md``) on tiles of the two ``2019_YELL_*`` images and prints recall@300 on ``OSBS_029`` and the
   recall waterfall before and after (``waterfall.png``).
3. Exports a TF Serving SavedModel (``serving/rpn/<version>``), runs its ``serving_default`` signature on the
   held-out image's PNG bytes and draws the top proposals in ``proposals.png``.
4. Trains a ``FasterRCNN`` (one class: tree) on that RPN, prints pycocotools' AP / AP50 on ``OSBS_029`` and the
   COCO AR of its proposals beside rpn-tf's recall, exports it (``serving/faster_rcnn/<version>``), serves the
   image's PNG bytes and draws the detections in ``detections.png``.

Run: ``rpn-tf demo`` or ``python -m rpn_tf.tools.demo [--out DIR] [--epochs N]``.
"""

from __future__ import annotations

import argparse
import os

from rpn_tf.tools.options import import_tensorflow

import_tensorflow()  # TensorFlow's start-up lines hidden (run as a module too)

import tensorflow as tf  # noqa: E402

import rpn_tf  # noqa: E402
from rpn_tf.data import deepforest  # noqa: E402
from rpn_tf import evaluation  # noqa: E402
from rpn_tf.tools.train_deepforest import DEFAULT_EPOCHS, DEFAULT_RECIPE, DETECTOR_EPOCHS, RECIPES, \
    format_detector_report, padded, recipe_anchors, train, train_detector  # noqa: E402
from rpn_tf.tools.visualize import proposals_picture, target_picture, write_png  # noqa: E402


def show_targets(image, annotation, out_dir, anchor_config):
    png, before, labels = target_picture(image, annotation.boxes, anchor_config, max_negatives=20)
    print(f"image {deepforest.EVAL_IMAGE}: {image.shape[1]}x{image.shape[0]} px, {len(annotation.boxes)} trees, "
          f"{len(labels)} anchors")
    print(f"labels before sampling: {(before == 1).sum()} positive, {(before == 0).sum()} negative, "
          f"{(before == -1).sum()} ignored; sampled: {(labels == 1).sum()} positive, {(labels == 0).sum()} negative")
    path = os.path.join(out_dir, "rpn_targets.png")
    write_png(path, png)
    print(f"wrote {path}")


def serve_and_draw(model, image, annotation, out_dir, top_n):
    from rpn_tf.serving import export_saved_model

    export_dir = export_saved_model(model, os.path.join(out_dir, "serving"), "rpn")
    print(f"exported the SavedModel to {export_dir}")
    served = tf.saved_model.load(export_dir).signatures["serving_default"]
    outputs = served(encoded_images=tf.constant([tf.io.encode_png(image).numpy()]))
    count = int(outputs["num_proposals"][0])
    metric = rpn_tf.ProposalRecall(top_n=300)
    metric.update_state(padded([annotation.boxes]), outputs["proposal_boxes"], outputs["num_proposals"])
    recall = {key: float(value) for key, value in metric.result().items()}
    print(f"served model on {deepforest.EVAL_IMAGE}: {count} proposals, "
          + ", ".join(f"{k} {v:.3f}" for k, v in recall.items()))
    boxes = outputs["proposal_boxes"].numpy()[0, :min(count, top_n)]
    scores = outputs["proposal_scores"].numpy()[0, :len(boxes)]
    path = os.path.join(out_dir, "proposals.png")
    write_png(path, proposals_picture(image, boxes, scores, annotation.boxes))
    print(f"wrote {path} (top {len(boxes)} proposals yellow, brighter = higher score; GT green)")
    return recall


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rpn-tf demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                        help=f"training recipe (default {DEFAULT_RECIPE}; see docs/recipes.md)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"training epochs (default {DEFAULT_EPOCHS}; 0 skips training)")
    parser.add_argument("--top-n", type=int, default=50, help="proposals drawn in proposals.png")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds initialisation, data order, augmentation and sampling (the README's figures: "
                             "seeds 0, 1, 2)")
    parser.add_argument("--detector-epochs", type=int, default=DETECTOR_EPOCHS,
                        help=f"then a FasterRCNN on the RPN for this many epochs (default {DETECTOR_EPOCHS}; 0 skips)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    image, annotation = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    show_targets(image, annotation, args.out, recipe_anchors(args.recipe))
    if args.epochs <= 0:
        return
    print(f"training on YELL tiles for {args.epochs} epochs ({args.recipe} recipe) ...")
    model, report = train(epochs=args.epochs, out_dir=args.out, verbose=2, recipe=args.recipe, seed=args.seed)
    print(f"{report['tiles']} tiles, {report['train_boxes']} boxes; {report['train_seconds']} s; "
          f"final loss {report['final_loss']:.4f}; model saved to {os.path.join(args.out, 'rpn_deepforest.keras')}")
    for stage in ("before", "after"):
        recall = report[f"recall_{stage}"]
        print(f"{deepforest.EVAL_IMAGE} recall {stage:>6} training: "
              + ", ".join(f"{k} {v:.3f}" for k, v in recall.items()))
    for stage in ("before", "after"):
        print(f"recall waterfall on {deepforest.EVAL_IMAGE} {stage} training:")
        print(evaluation.format_waterfall(report[f"waterfall_{stage}"]))
    path = evaluation.plot_waterfall(report["waterfall_after"], os.path.join(args.out, "waterfall.png"),
                                     title=f"recall waterfall on {deepforest.EVAL_IMAGE} ({args.recipe} recipe)")
    print(f"wrote {path}")
    serve_and_draw(model, image, annotation, args.out, args.top_n)
    if args.detector_epochs > 0:
        detect_and_draw(model, image, annotation, args.out, args.detector_epochs, seed=args.seed)


def detect_and_draw(rpn, image, annotation, out_dir, epochs, seed=0):
    """Step 4: a FasterRCNN on the trained RPN (both stages fine-tuned jointly), pycocotools' AP on OSBS_029, the
    detector's SavedModel served on the image's PNG bytes, and ``detections.png``."""
    from rpn_tf.serving import export_saved_model

    print(f"training a FasterRCNN on the RPN for {epochs} epochs ...")
    detector, report = train_detector(rpn, epochs, seed=seed, out_dir=out_dir)
    print(format_detector_report(report))
    export_dir = export_saved_model(detector, os.path.join(out_dir, "serving"), "faster_rcnn")
    served = tf.saved_model.load(export_dir).signatures["serving_default"]
    outputs = served(encoded_images=tf.constant([tf.io.encode_png(image).numpy()]))
    count = int(outputs["num_detections"][0])
    boxes = outputs["detection_boxes"].numpy()[0, :count]
    scores = outputs["detection_scores"].numpy()[0, :count]
    keep = scores >= 0.5
    path = os.path.join(out_dir, "detections.png")
    write_png(path, proposals_picture(image, boxes[keep], scores[keep], annotation.boxes,
                                      label="detections ({count}, score >= 0.5)"))
    print(f"exported the detector to {export_dir}; served: {count} detections, {int(keep.sum())} scoring >= 0.5 "
          f"drawn in {path} (yellow, brighter = higher score; GT green)")
    return report


if __name__ == "__main__":
    main()
