"""Train the RPN on deepforest's aerial tree crowns and report proposal recall on a held-out image.

Train: tiles (400×400, 100 px overlap) of the two ``2019_YELL_*`` images. Evaluate: ``OSBS_029`` (400×400,
61 trees), a different site. Run: ``python -m rpn_tf.tools.train_deepforest [--epochs N] [--backbone simple]``.

Model and anchors: ``rpn_tf.tools.presets.DEEPFOREST`` (stride 8, 20 / 40 / 80 px anchors, why there). Training
starts from random weights (no network needed).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from rpn_tf.tools.options import import_tensorflow

import_tensorflow()  # TensorFlow's start-up lines hidden (run as a module too)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import rpn_tf  # noqa: E402
from rpn_tf import evaluation as rpn_evaluation  # noqa: E402
from rpn_tf.coco_eval import BOX_AREA_NOTE  # noqa: E402
from rpn_tf.data import adapters, deepforest  # noqa: E402
from rpn_tf.modeling.fitting import steps_per_epoch_of, train_model  # noqa: E402
from rpn_tf.ops.box_ops import box_area  # noqa: E402
from rpn_tf.tools.presets import DEEPFOREST  # noqa: E402

TILE_SIZE = DEEPFOREST.tile_size


def training_tiles():
    """``(images uint8 [T, 400, 400, 3], boxes list of [n, 4], boxes cut by tiling)`` from the YELL images."""
    tiles = adapters.tile_dataset(adapters.from_deepforest(list(deepforest.TRAIN_IMAGES)), DEEPFOREST.tile_size,
                                  DEEPFOREST.tile_overlap)
    images, boxes, cut = [], [], 0
    for tile in tiles.as_numpy_iterator():
        images.append(tile["image"])
        boxes.append(tile["boxes"])
        cut += int(tile["boxes_cut"])
    return np.stack(images), boxes, cut


def padded(boxes_list, max_boxes=DEEPFOREST.max_boxes):
    out = -np.ones((len(boxes_list), max_boxes, 4), np.float32)
    for index, boxes in enumerate(boxes_list):
        if len(boxes) > max_boxes:
            raise ValueError(f"tile {index} has {len(boxes)} boxes, more than max_boxes={max_boxes}")
        out[index, :len(boxes)] = boxes
    return out


def scale_jitter(image, boxes, seed, low=0.8, high=1.25):
    """The tile scaled by a log-uniform factor in ``[low, high]``, then cropped (larger) or zero-padded (smaller) back
    to the tile size at a random offset; boxes follow, are clipped, and become padding (-1) when less than half of
    them stays in view (the tiling rule)."""
    size = TILE_SIZE
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    scale = tf.exp(tf.random.stateless_uniform([], seeds[0], np.log(low), np.log(high)))
    scaled = tf.cast(tf.round(size * scale), tf.int32)
    scale = tf.cast(scaled, tf.float32) / size  # the scale actually applied
    image = tf.cast(tf.round(tf.image.resize(image, [scaled, scaled])), tf.uint8)
    canvas = tf.maximum(scaled, size)
    offsets = tf.random.stateless_uniform([4], seeds[1], 0.0, 1.0)
    pad = tf.cast(offsets[:2] * tf.cast(canvas - scaled + 1, tf.float32), tf.int32)
    crop = tf.cast(offsets[2:] * tf.cast(canvas - size + 1, tf.float32), tf.int32)
    pad, crop = tf.minimum(pad, canvas - scaled), tf.minimum(crop, canvas - size)
    image = tf.image.pad_to_bounding_box(image, pad[0], pad[1], canvas, canvas)
    image = tf.ensure_shape(tf.image.crop_to_bounding_box(image, crop[0], crop[1], size, size), [size, size, 3])
    shift = tf.cast(tf.tile(pad - crop, [2]), tf.float32)
    valid = boxes[:, 2] > boxes[:, 0]
    moved = boxes * scale + shift
    clipped = tf.clip_by_value(moved, 0.0, float(size))
    keep = valid & (box_area(clipped) >= 0.5 * box_area(moved)) & (box_area(clipped) > 0)
    return image, tf.where(keep[:, None], clipped, -1.0)


def augment(image, boxes, seed, symmetries="flips", jitter=None):
    """Random symmetries of the (square) tile — ``"flips"``: left-right and up-down (4 of the 8 symmetries of a
    square); ``"dihedral"``: also the transpose, i.e. all 8 (the 90° rotations and reflections: aerial images have
    no up) — with the boxes following (padding rows stay -1), and colour jitter (the evaluation site differs).
    ``jitter``: ``(low, high)`` scale jitter (``scale_jitter``) first, or ``None``.
    Stateless: ``seed`` (int64 ``[2]``, one per element) decides everything, so a run is reproducible."""
    size = float(TILE_SIZE)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
    if jitter is not None:
        image, boxes = scale_jitter(image, boxes, seeds[5], *jitter)
    colour = tf.cast(image, tf.float32) / 255.0
    colour = tf.image.stateless_random_brightness(colour, 0.15, seeds[0])
    colour = tf.image.stateless_random_contrast(colour, 0.7, 1.3, seeds[1])
    colour = tf.image.stateless_random_saturation(colour, 0.7, 1.3, seeds[2])
    colour = tf.image.stateless_random_hue(colour, 0.05, seeds[3])
    image = tf.cast(tf.clip_by_value(colour, 0.0, 1.0) * 255.0 + 0.5, tf.uint8)
    valid = boxes[:, 2] > boxes[:, 0]
    choice = tf.random.stateless_uniform([], seeds[4], 0, 8 if symmetries == "dihedral" else 4, tf.int32)
    if choice % 2 == 1:
        image = tf.image.flip_left_right(image)
        boxes = tf.stack([boxes[:, 0], size - boxes[:, 3], boxes[:, 2], size - boxes[:, 1]], axis=1)
    if (choice // 2) % 2 == 1:
        image = tf.image.flip_up_down(image)
        boxes = tf.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], axis=1)
    if choice >= 4:  # the transpose: with the flips, the 90° rotations
        image = tf.transpose(image, [1, 0, 2])
        boxes = tf.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3], boxes[:, 2]], axis=1)
    return image, tf.where(valid[:, None], boxes, -1.0)


# Training recipes, each a set of RPNModel options (see docs/recipes.md for what each gave on OSBS_029).
RECIPES = {
    "article": {},  # 256 random samples at ≤ 50 % positives, BCE
    "focal": {"objectness_loss": "focal", "sampling": "none"},  # focal loss over every labeled anchor
    "ohem": {"negative_sampling": "hard"},  # 256 samples, negatives the highest-scored
    # P2–P6 of the small network with top-down context at every level; one crown-sized anchor per level (16–256
    # px); NMS at IoU 0.6: in a closed canopy the duplicates of a crown are shifted boxes at IoU ~0.6
    "fpn": {"backbone": "simple_fpn", "head_channels": None,
            "anchor_config": rpn_tf.MultiLevelAnchorConfig.fpn(smallest_size=16.0, ratios=(0.75, 1.0, 4.0 / 3.0)),
            "proposal_config": rpn_tf.ProposalConfig.fpn(nms_iou=0.6)},
}
# the fpn recipe with positives from IoU 0.5 (more positives per small crown)
RECIPES["fpn_iou05"] = {**RECIPES["fpn"], "target": {"positive_iou": 0.5}}
# the fpn recipe with all 8 symmetries of the square tile (aerial images have no up) and scale jitter 0.8–1.25×
RECIPES["fpn_aug"] = {**RECIPES["fpn"], "symmetries": "dihedral", "jitter": (0.8, 1.25)}
# the fpn recipe with IoU-aware objectness (score = predicted fit of the box), without the extra augmentation
RECIPES["fpn_iou"] = {**RECIPES["fpn"], "objectness_target": "iou"}
# fpn_aug with IoU-aware objectness: a positive's target is the IoU of its predicted box with its GT box
RECIPES["fpn_aug_iou"] = {**RECIPES["fpn_aug"], "objectness_target": "iou"}
# the fpn recipe trained on every anchor, cross-boundary ones included (detectron2's and torchvision's default,
# not the article's): on 400 px tiles with anchors up to 256 px, the cross-boundary anchors are never trained by
# the article's rule, yet at test time their clipped boxes are proposals like any other
RECIPES["fpn_all"] = {**RECIPES["fpn"], "target": {"allowed_border": -1.0}}
DEFAULT_RECIPE = "fpn"  # chosen by measurement on OSBS_029, see docs/recipes.md
DEFAULT_EPOCHS = 30  # ~8 minutes of training on 2 CPU cores


def recipe_anchors(recipe):
    """The anchors a recipe trains with."""
    return RECIPES[recipe].get("anchor_config", DEEPFOREST.anchor_config)


def build_model(backbone="simple", seed=0, recipe="article"):
    """The recipe's ``RPNModel``, initialised from ``seed`` (``keras.utils.set_random_seed``: Python, NumPy and
    TensorFlow); its target encoder samples with the same seed."""
    keras.utils.set_random_seed(seed)
    options = {"backbone": backbone, "head_channels": DEEPFOREST.head_channels,
               "anchor_config": DEEPFOREST.anchor_config, **RECIPES[recipe]}
    for data_option in ("symmetries", "jitter"):  # the data side of the recipe: training_dataset's
        options.pop(data_option, None)
    target = {"max_boxes": DEEPFOREST.max_boxes, "sampling": options.pop("sampling", "balanced"), "seed": seed,
              **options.pop("target", {})}
    return rpn_tf.RPNModel(DEEPFOREST.image_size, target_encoder_config=target, **options)


def evaluation_data():
    return adapters.from_deepforest([deepforest.EVAL_IMAGE])


def evaluate_recall(model):
    """Recall@300 (IoU 0.5, 0.7) and AR@300 on OSBS_029."""
    return rpn_evaluation.evaluate_recall(model, evaluation_data(), (300,))


def training_dataset(images, boxes, encoder, batch_size, seed=0, symmetries="flips", jitter=None):
    """Shuffled (``seed``), augmented (per-element stateless seeds drawn from ``seed``), encoded batches: the same
    ``seed`` gives the same data order, augmentation and targets."""
    tiles = tf.data.Dataset.from_tensor_slices((images, padded(boxes))).shuffle(
        len(images), seed=seed, reshuffle_each_iteration=True)
    element_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return (tf.data.Dataset.zip(tiles, element_seeds)
            .map(lambda tile, element_seed: augment(*tile, element_seed, symmetries, jitter),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .map(encoder, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE))


def train(epochs=DEFAULT_EPOCHS, backbone="simple", batch_size=8, learning_rate=3e-3, out_dir=None, verbose=2,
          recipe=DEFAULT_RECIPE, seed=0):
    """Trains on the YELL tiles; returns ``(model, report dict)`` with recall and the recall waterfall on
    OSBS_029 before and after training. ``seed`` fixes initialisation, data order, augmentation and sampling."""
    images, boxes, cut = training_tiles()
    model = build_model(backbone, seed=seed, recipe=recipe)
    before = evaluate_recall(model)
    waterfall_before = rpn_evaluation.recall_waterfall(model, evaluation_data())
    dataset = training_dataset(images, boxes, model.target_encoder, batch_size, seed,
                               RECIPES[recipe].get("symmetries", "flips"), RECIPES[recipe].get("jitter"))
    start = time.perf_counter()
    # Cosine decay to zero: weights settle at the end, so batch-norm moving statistics match them.
    history = train_model(model, dataset, epochs, optimizer="adam", learning_rate=learning_rate,
                          lr_schedule="cosine", steps_per_epoch=steps_per_epoch_of(len(images), batch_size),
                          verbose=verbose)
    seconds = time.perf_counter() - start
    after = evaluate_recall(model)
    report = {"tiles": len(images), "train_boxes": int(sum(len(b) for b in boxes)), "boxes_cut_by_tiling": cut,
              "recipe": recipe, "seed": seed, "epochs": epochs, "train_seconds": round(seconds, 1),
              "final_loss": history["loss"][-1], "recall_before": before, "recall_after": after,
              "waterfall_before": waterfall_before,
              "waterfall_after": rpn_evaluation.recall_waterfall(model, evaluation_data())}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        model.save(os.path.join(out_dir, "rpn_deepforest.keras"))
    return model, report


DETECTOR_EPOCHS = 15  # the second stage on top of the trained RPN (~3 minutes on 2 CPU cores)


def train_detector(rpn, epochs=DETECTOR_EPOCHS, batch_size=8, learning_rate=1e-3, seed=0, verbose=2,
                   out_dir=None):
    """A one-class ``FasterRCNN`` (tree) on the trained ``rpn``, both stages fine-tuned jointly on the YELL tiles;
    returns ``(detector, report)`` with pycocotools' detection metrics on OSBS_029 (AP, AP50, …) and the COCO AR of
    its proposals beside rpn-tf's recall."""
    from rpn_tf import coco_eval

    images, boxes, _ = training_tiles()
    keras.utils.set_random_seed(seed)
    detector = rpn_tf.FasterRCNN(1, rpn=rpn, representation_size=DEEPFOREST.representation_size, seed=seed)
    dataset = training_dataset(images, boxes, rpn.target_encoder, batch_size, seed)
    start = time.perf_counter()
    history = train_model(detector, dataset, epochs, optimizer="adam", learning_rate=learning_rate,
                          lr_schedule="cosine", steps_per_epoch=steps_per_epoch_of(len(images), batch_size),
                          verbose=verbose)
    report = {"epochs": epochs, "seed": seed, "train_seconds": round(time.perf_counter() - start, 1),
              "final_loss": history["loss"][-1],
              "coco_detection": coco_eval.detection_metrics(detector, evaluation_data()),
              "coco_proposals": coco_eval.proposal_metrics(detector.rpn, evaluation_data(), (100, 300, 1000))}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        detector.save(os.path.join(out_dir, "faster_rcnn_deepforest.keras"))
    return detector, report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--backbone", default=DEEPFOREST.backbone)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE, help="training recipe")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds initialisation, data order, augmentation and sampling: the same seed repeats a run")
    parser.add_argument("--out", default="demo_output", help="folder for rpn_deepforest.keras")
    parser.add_argument("--json", default=None, help="also write the report (recall, waterfalls) here")
    parser.add_argument("--detector-epochs", type=int, default=0,
                        help="then train a FasterRCNN on the RPN for this many epochs and report COCO AP on OSBS_029 "
                             f"(0: the RPN only; the demo uses {DETECTOR_EPOCHS})")
    args = parser.parse_args(argv)
    model, report = train(args.epochs, args.backbone, args.batch_size, args.learning_rate, args.out,
                          recipe=args.recipe, seed=args.seed)
    if args.detector_epochs > 0:
        _, report["detector"] = train_detector(model, args.detector_epochs, args.batch_size, seed=args.seed,
                                               out_dir=args.out)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)
    print(f"{report['tiles']} training tiles, {report['train_boxes']} boxes "
          f"({report['boxes_cut_by_tiling']} box-tile pairs left out by the 50 % visibility rule)")
    print(f"trained {report['epochs']} epochs in {report['train_seconds']} s, final loss {report['final_loss']:.4f}")
    for stage in ("before", "after"):
        recall = report[f"recall_{stage}"]
        print(f"OSBS_029 {stage:>6} training: " + ", ".join(f"{k} {v:.3f}" for k, v in recall.items()))
    print(f"recall waterfall on OSBS_029 after training ({report['recipe']} recipe):")
    print(rpn_evaluation.format_waterfall(report["waterfall_after"]))
    if "detector" in report:
        print(format_detector_report(report["detector"]))


def format_detector_report(report):
    """Lines of ``train_detector``'s report: pycocotools' figures on OSBS_029."""
    detection, proposals = report["coco_detection"], report["coco_proposals"]
    lines = [f"FasterRCNN: {report['epochs']} epochs in {report['train_seconds']} s; OSBS_029 by pycocotools: "
             + ", ".join(f"{k} {detection[k]:.3f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "AR100"))
             + f" ({BOX_AREA_NOTE})",
             "its proposals: " + ", ".join(
                 f"AR@{n} {proposals[f'coco/AR@{n}']:.3f} (rpn-tf {proposals[f'ar@{n}']:.3f}), recall@{n} IoU 0.5 "
                 f"{proposals[f'coco/recall@{n}_iou0.5']:.3f} (rpn-tf {proposals[f'recall@{n}_iou0.5']:.3f})"
                 for n in (100, 300))]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
