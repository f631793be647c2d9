"""Proposal recall on OSBS_029 of a Model Garden-trained peer RPN beside rpn-tf's deepforest ``fpn`` recipe.

What it measures: the same network (rpn-tf's ``simple_fpn`` backbone + shared ``RpnHead``, from
``train_deepforest.build_model(recipe="fpn")``), the same 80 YELL training tiles, augmentation, data order and
optimizer (Adam 3e-3, cosine decay to 0, batch 8, ``--epochs``), but Model Garden's RPN training and proposals:

* targets: ``RpnAnchorLabeler(0.7, 0.3, 256, 0.5)`` in ``dataset.map`` (its Faster R-CNN box coder, no weights);
* loss: as Model Garden's Mask R-CNN task, ``RpnScoreLoss`` + ``RpnBoxLoss(huber delta 1/9)``, weights 1 and 1.
  The task passes the Fast R-CNN sample count (``roi_sampler.num_sampled_rois`` = 512) as ``RpnScoreLoss``'s
  normaliser (``--score-normalizer``, per image); the box loss covers every matched anchor, normalised per level;
* proposals: ``MultilevelROIGenerator`` (test: pre-NMS top 1 000 per level, min size 16, NMS ``--nms-iou``, 1 000
  proposals), decoding with ``box_ops.decode_boxes`` (the labeler's coder, inverted).

Recall@N (N = 100, 300, 1000; IoU 0.5 / 0.7) on OSBS_029 only: the fraction of GT boxes whose best IoU with the N
best-scored proposals reaches the threshold (``rpn_tf.iou_matrix``). ``--ours`` also trains rpn-tf's recipe
(``train_deepforest.train``) and scores it the same way (same NMS IoU). Training wall times are reported for both.

Layout: rpn-tf's outputs are flat in anchor order (level, row, column, anchor); each level's slice is reshaped to
Model Garden's ``[B, H, W, A]`` scores / ``[B, H, W, A·4]`` deltas, and rpn-tf's anchors the same way to
``anchor_boxes`` ``[H, W, A·4]``. The anchors are rpn-tf's (at 400 px Model Garden's own ``Anchor`` spaces P5 / P6
centres 400/13 and 400/7 px apart, not 32 / 64). Checked at start-up (``check_layout``): the anchors equal Model
Garden's ``Anchor`` at 448 px (ratios h/w → its w/h), the reshaped outputs equal the head's conv maps, and
labeler targets pushed through the generator as an oracle give back the GT boxes.

Install Model Garden (benchmarks only): ``pip install --no-deps tf-models-official==2.20.0 tf-keras==2.21.0 pyyaml
gin-config``. Run: ``python benchmarks/compare_recall.py [--seeds 0 1 2] [--ours] [--json out.json]``;
smoke test: ``--epochs 1 --max-tiles 8``.
"""

import argparse
import dataclasses
import importlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import rpn_tf  # noqa: E402
from benchmarks.model_garden import INSTALL, import_model_garden  # noqa: E402
from rpn_tf.modeling.backbones import feature_list  # noqa: E402
from rpn_tf.tools import train_deepforest as tdf  # noqa: E402

TOP_NS, IOUS = (100, 300, 1000), (0.5, 0.7)


def model_garden():
    modules = import_model_garden()
    if modules is None:
        sys.exit(f"tf-models-official is not installed: {INSTALL}")
    return (*modules, importlib.import_module("official.vision.losses.maskrcnn_losses"),
            importlib.import_module("official.vision.ops.box_ops"))


def to_levels(image_size, anchor_config, logits, deltas):
    """Flat ``[B, A]`` / ``[B, A, 4]`` in rpn-tf's anchor order → Model Garden's dicts level -> ``[B, H, W, K]`` /
    ``[B, H, W, 4K]`` (``logits`` may be ``None``)."""
    scores, boxes, start = {}, {}, 0
    for level in anchor_config.levels:
        (rows, cols), k = level.feature_map_size(image_size), level.num_anchors_per_location
        key, end = str(int(np.log2(level.stride))), start + rows * cols * k
        if logits is not None:
            scores[key] = tf.reshape(logits[:, start:end], [-1, rows, cols, k])
        boxes[key] = tf.reshape(deltas[:, start:end], [-1, rows, cols, 4 * k])
        start = end
    return scores, boxes


def anchor_boxes(image_size, anchor_config):
    """rpn-tf's anchors as Model Garden's ``anchor_boxes``: level -> ``[H, W, 4K]`` yxyx pixels."""
    _, boxes = to_levels(image_size, anchor_config, None, rpn_tf.generate_anchors(image_size, anchor_config)[None])
    return {key: value[0] for key, value in boxes.items()}


def flat(level_dict, size):
    return tf.concat([tf.reshape(value, [-1, size]) for value in level_dict.values()], axis=0)


def proposal_generator(mg, nms_iou, min_size=16.0):
    return mg[1].MultilevelROIGenerator(test_pre_nms_top_k=1000, test_pre_nms_min_size_threshold=min_size,
                                        test_nms_iou_threshold=nms_iou, test_num_proposals=max(TOP_NS))


def check_layout(mg, model, tile, tile_boxes):
    """Anchor order, output layout and box-coder round trip (raises on a mismatch)."""
    config, size = model.anchor_config, model.image_size
    levels = config.levels
    # 1. rpn-tf's anchors in Model Garden's layout are its own Anchor's where both grids agree (size % 64 == 0).
    assert all(len(level.scales) == 1 and level.scales == levels[0].scales and level.ratios == levels[0].ratios
               for level in levels), "one anchor size per level, scale / stride constant, same ratios"
    keys = [int(np.log2(level.stride)) for level in levels]
    theirs = mg[0].Anchor(keys[0], keys[-1], 1, [1.0 / r for r in levels[0].ratios], levels[0].scales[0],
                          (448, 448)).multilevel_boxes
    for key, ours in anchor_boxes((448, 448), config).items():
        np.testing.assert_allclose(ours.numpy(), theirs[key].numpy(), atol=1e-3, err_msg=f"anchors of level {key}")
    # 2. The reshaped flat outputs equal the head's per-level conv maps.
    images = tf.constant(tile[None])
    outputs = model(images, training=False)
    scores, boxes = to_levels(size, config, outputs["objectness_logits"], outputs["box_deltas"])
    features = feature_list(model.backbone(model.preprocessing(images), training=False))
    for key, feature in zip(scores, features):
        hidden = model.head.conv(feature)
        np.testing.assert_allclose(scores[key].numpy(), model.head.objectness(hidden).numpy(), atol=1e-5)
        np.testing.assert_allclose(boxes[key].numpy(), model.head.deltas(hidden).numpy(), atol=1e-5)
    # 3. Oracle: the labeler's box targets (its coder's encode) fed to the generator (decode_boxes) with high scores
    #    at the matched anchors give back the GT boxes.
    anchors = anchor_boxes(size, config)
    gt = tf.constant(tile_boxes[tile_boxes[:, 2] > tile_boxes[:, 0]], tf.float32)
    labeler = mg[0].RpnAnchorLabeler(0.7, 0.3, 256, 0.5)
    _, box_targets = labeler.label_anchors(anchors, gt, tf.ones([gt.shape[0], 1]))
    matched = tf.reduce_any(tf.abs(flat(box_targets, 4)) > 1e-6, axis=1)
    decoded = mg[3].decode_boxes(flat(box_targets, 4), flat(anchors, 4))
    worst = tf.reduce_min(tf.reduce_max(rpn_tf.iou_matrix(tf.boolean_mask(decoded, matched), gt), axis=1))
    assert worst > 0.999, f"labeler encode / decode_boxes disagree (IoU {float(worst):.4f})"
    oracle_scores = {key: tf.where(tf.reduce_any(tf.abs(tf.reshape(value, [*value.shape[:2], -1, 4])) > 1e-6, -1),
                                   10.0, -10.0)[None] for key, value in box_targets.items()}
    rois, _ = proposal_generator(mg, 0.99, 0.0)({k: v[None] for k, v in box_targets.items()}, oracle_scores,
                                                {k: v[None] for k, v in anchors.items()},
                                                tf.constant([size], tf.float32), training=False)
    oracle = float(tf.reduce_mean(tf.cast(tf.reduce_max(rpn_tf.iou_matrix(gt, rois[0]), axis=1) > 0.99, tf.float32)))
    assert oracle > 0.95, f"oracle recall {oracle:.3f}: the generator does not read the labeler's layout"
    print(f"layout checks passed: anchors = Model Garden's Anchor at 448 px, outputs = head maps, "
          f"{int(tf.reduce_sum(tf.cast(matched, tf.int32)))} matched anchors decode to their GT, oracle recall@IoU0.99 "
          f"{oracle:.3f} over {gt.shape[0]} GT (< 1 only if two GT share their best anchor)")


def recall(gt, boxes, scores):
    """Recall@N at each IoU of the ``N`` best-scored ``boxes`` ``[K, 4]``."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    result = {}
    for n in TOP_NS:
        iou = rpn_tf.iou_matrix(gt, tf.gather(boxes, order[:n])).numpy()
        best = iou.max(axis=1) if iou.shape[1] else np.zeros(len(gt))
        result.update({f"recall@{n}_iou{t}": float((best >= t).mean()) for t in IOUS})
    return result


def osbs_029():
    element = next(iter(tdf.evaluation_data().take(1)))
    image, gt = element["image"], tf.cast(element["boxes"], tf.float32)
    assert tuple(image.shape[:2]) == tdf.DEEPFOREST.image_size, "OSBS_029 is a 400x400 canvas"
    return image[None], gt


def train_peer(mg, args, seed, images, boxes):
    model = tdf.build_model(seed=seed, recipe=args.recipe)  # seeds Python, NumPy and TensorFlow
    size, config = model.image_size, model.anchor_config
    anchors = anchor_boxes(size, config)
    labeler = mg[0].RpnAnchorLabeler(0.7, 0.3, 256, 0.5)

    def label(image, padded):
        gt = tf.boolean_mask(padded, padded[:, 2] > padded[:, 0])
        score_targets, box_targets = labeler.label_anchors(anchors, gt, tf.ones([tf.shape(gt)[0], 1]))
        return image, {"scores": dict(score_targets), "boxes": dict(box_targets)}

    # training_dataset's shuffle, per-element seeds and augmentation; the labeler samples with tf.random.shuffle
    # (a stateful op, seeded by the global seed), so its map runs sequentially to stay reproducible.
    recipe = tdf.RECIPES[args.recipe]
    tiles = tf.data.Dataset.from_tensor_slices((images, tdf.padded(boxes))).shuffle(
        len(images), seed=seed, reshuffle_each_iteration=True)
    element_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    dataset = (tf.data.Dataset.zip(tiles, element_seeds)
               .map(lambda tile, s: tdf.augment(*tile, s, recipe.get("symmetries", "flips"), recipe.get("jitter")),
                    num_parallel_calls=tf.data.AUTOTUNE)
               .map(label).batch(args.batch_size).prefetch(tf.data.AUTOTUNE))
    steps = args.epochs * -(-len(images) // args.batch_size)
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(args.learning_rate, max(steps, 1)))
    optimizer.build(model.trainable_variables)
    score_loss_fn = mg[2].RpnScoreLoss(args.score_normalizer)
    box_loss_fn = mg[2].RpnBoxLoss(1.0 / 9.0)

    @tf.function(jit_compile=args.jit_compile)
    def train_step(batch_images, targets):
        with tf.GradientTape() as tape:
            outputs = model(batch_images, training=True)
            scores, deltas = to_levels(size, config, outputs["objectness_logits"], outputs["box_deltas"])
            score_loss = tf.reduce_mean(score_loss_fn(scores, targets["scores"]))
            box_loss = tf.reduce_mean(box_loss_fn(deltas, targets["boxes"]))
            loss = 1.0 * score_loss + 1.0 * box_loss  # rpn_score_weight, rpn_box_weight
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return tf.stack([loss, score_loss, box_loss])

    start = time.perf_counter()
    for epoch in range(args.epochs):
        losses = np.mean([train_step(*batch).numpy() for batch in dataset], axis=0)
        print(f"peer seed {seed} epoch {epoch + 1}/{args.epochs}: loss {losses[0]:.4f} "
              f"(score {losses[1]:.4f}, box {losses[2]:.4f}), {time.perf_counter() - start:.0f} s")
    seconds = time.perf_counter() - start
    image, gt = osbs_029()
    outputs = model(image, training=False)
    scores, deltas = to_levels(size, config, outputs["objectness_logits"], outputs["box_deltas"])
    rois, roi_scores = proposal_generator(mg, args.nms_iou)(deltas, scores, {k: v[None] for k, v in anchors.items()},
                                                           tf.constant([size], tf.float32), training=False)
    return {"train_seconds": round(seconds, 1), "final_loss": float(losses[0]),
            **recall(gt, rois[0], roi_scores[0].numpy())}


def train_ours(args, seed):
    original = tdf.training_tiles
    if args.max_tiles:
        tdf.training_tiles = lambda: (lambda i, b, c: (i[:args.max_tiles], b[:args.max_tiles], c))(*original())
    try:
        model, report = tdf.train(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                                  recipe=args.recipe, seed=seed, verbose=2)
    finally:
        tdf.training_tiles = original
    image, gt = osbs_029()
    config = dataclasses.replace(model.proposal_config, post_nms_top_k_test=max(TOP_NS), nms_iou=args.nms_iou)
    proposals = model.propose(model(image, training=False), training=False, proposal_config=config)
    count = int(proposals["num_proposals"][0])
    return {"train_seconds": report["train_seconds"], "final_loss": float(report["final_loss"]),
            **recall(gt, proposals["boxes"][0, :count], proposals["scores"][0, :count].numpy())}


def summary(runs, name):
    values = [run[name] for run in runs if name in run]
    keys = [key for key in values[0] if key.startswith("recall") or key in ("train_seconds", "final_loss")]
    return {key: (float(np.mean([v[key] for v in values])),
                  float(np.std([v[key] for v in values], ddof=1)) if len(values) > 1 else 0.0) for key in keys}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=tdf.DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=0, help="seeds initialisation, data order and augmentation")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="several runs; mean ± std")
    parser.add_argument("--recipe", choices=("fpn", "fpn_aug"), default="fpn", help="network, anchors, augmentation")
    parser.add_argument("--nms-iou", type=float, default=0.6, help="test NMS IoU (both models)")
    parser.add_argument("--score-normalizer", type=int, default=512,
                        help="RpnScoreLoss normaliser per image (Model Garden's task: num_sampled_rois, 512)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--max-tiles", type=int, default=None, help="train on the first N tiles (smoke tests)")
    parser.add_argument("--jit-compile", action="store_true", help="XLA for the peer's train step (Keras turns "
                        "it on for ours only when a GPU is present)")
    parser.add_argument("--ours", action="store_true", help="also train and score rpn-tf's recipe")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    mg = model_garden()
    images, boxes, _ = tdf.training_tiles()
    images, boxes = images[:args.max_tiles], boxes[:args.max_tiles]
    index = int(np.argmax([len(b) for b in boxes]))  # the tile with the most crowns
    check_layout(mg, tdf.build_model(seed=0, recipe=args.recipe), images[index], tdf.padded([boxes[index]])[0])
    runs = []
    for seed in args.seeds if args.seeds is not None else [args.seed]:
        run = {"seed": seed, "peer": train_peer(mg, args, seed, images, boxes)}
        if args.ours:
            run["ours"] = train_ours(args, seed)
        runs.append(run)
        print(json.dumps(run))
    names = ["peer"] + (["ours"] if args.ours else [])
    result = {"args": vars(args), "tiles": len(images), "runs": runs, "summary": {n: summary(runs, n) for n in names}}
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=1)
    titles = {"peer": "Model Garden peer", "ours": "rpn-tf (ours)"}
    print(f"\nOSBS_029 proposal recall, {args.recipe} network, {args.epochs} epochs on {len(images)} tiles, NMS IoU "
          f"{args.nms_iou}, seeds {[run['seed'] for run in runs]}" + (" (mean ± std)" if len(runs) > 1 else ""))
    print(f"{'':<22}" + "".join(f"{titles[n]:>22}" for n in names))
    for key in result["summary"]["peer"]:
        cells = [result["summary"][n][key] for n in names]
        print(f"{key:<22}" + "".join(f"{m:>13.3f} ± {s:<6.3f}" if len(runs) > 1 else f"{m:>22.3f}" for m, s in cells))


if __name__ == "__main__":
    main()
