"""The ``rpn-tf`` command line: ``train``, ``evaluate``, ``export``, ``predict``, ``visualize-targets``, ``demo``.

Datasets (``--format``):
  ``deepforest``  the bundled deepforest images (``--data`` names, comma-separated; default: the YELL images)
  ``voc``         a VOC folder (``--data ROOT`` with Annotations/ and JPEGImages/)
  ``coco``        COCO instances JSON (``--data FILE --images DIR``)
  ``tfrecord``    TF Object Detection API TFRecords (``--data GLOB``)
``--tile SIZE`` cuts images into SIZE×SIZE tiles (``--tile-overlap``, default SIZE/4).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from rpn_tf.tools.presets import DEEPFOREST  # noqa: E402  (no TensorFlow import behind it)

FORMATS = ("deepforest", "voc", "coco", "tfrecord")


def _add_data_arguments(parser):
    parser.add_argument("--format", choices=FORMATS, default="deepforest", help="dataset format")
    parser.add_argument("--data", default=None, help="dataset path (see the formats above)")
    parser.add_argument("--images", default=None, help="image folder (COCO)")
    parser.add_argument("--skip-errors", action="store_true", help="skip malformed records (counted) instead of "
                                                                     "stopping at the first")
    parser.add_argument("--tile", type=int, default=None, help="cut images into tiles of this size")
    parser.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in pixels (default tile/4)")


def _add_anchor_arguments(parser):
    anchors = DEEPFOREST.anchor_config
    parser.add_argument("--stride", type=int, default=anchors.stride)
    parser.add_argument("--scales", type=float, nargs="+", default=anchors.scales)
    parser.add_argument("--ratios", type=float, nargs="+", default=anchors.ratios)


def _add_model_arguments(parser):
    parser.add_argument("--backbone", default=DEEPFOREST.backbone,
                        help="vgg16 | resnet50 | mobilenet_v2 | simple, or a feature pyramid: resnet50_fpn | "
                             "mobilenet_v2_fpn | simple_fpn (FPN anchors 32-512 px; --stride/--scales ignored)")
    parser.add_argument("--weights", default=None, help="None, 'imagenet' or a weights file for the backbone")
    parser.add_argument("--image-size", type=int, nargs=2, default=DEEPFOREST.image_size, metavar=("H", "W"))
    _add_anchor_arguments(parser)
    parser.add_argument("--head-channels", type=int, default=DEEPFOREST.head_channels)
    parser.add_argument("--max-boxes", type=int, default=DEEPFOREST.max_boxes)
    parser.add_argument("--resize", choices=("letterbox", "stretch", "shorter_side"), default="letterbox",
                        help="how images of any size go onto the --image-size canvas (default: letterbox)")


def load_dataset(args, data=None):
    """The element dataset (``image``, ``boxes``, ``classes``) that ``args`` describe (``data`` overrides
    ``args.data``, e.g. for ``--val-data``)."""
    from rpn_tf.data import adapters

    if data is not None:
        args = argparse.Namespace(**{**vars(args), "data": data})

    on_error = "skip" if args.skip_errors else "raise"
    if args.format == "deepforest":
        names = args.data.split(",") if args.data else None
        dataset = adapters.from_deepforest(names)
    elif args.data is None:
        raise SystemExit(f"error: --data is required for --format {args.format}")
    elif args.format == "voc":
        dataset, report, _ = adapters.from_voc(args.data, on_error=on_error)
        _print_report(report)
    elif args.format == "coco":
        if args.images is None:
            raise SystemExit("error: --images is required for --format coco")
        dataset, report = adapters.from_coco(args.data, args.images, on_error=on_error)
        _print_report(report)
    else:
        dataset = adapters.read_od_tfrecords(args.data)
    if args.tile:
        overlap = args.tile // 4 if args.tile_overlap is None else args.tile_overlap
        dataset = adapters.tile_dataset(dataset, args.tile, overlap)
    return dataset


def _print_report(report):
    if report.skipped:
        print(f"skipped {len(report.skipped)} malformed records", file=sys.stderr)
        for name, reason in list(report.skipped.items())[:10]:
            print(f"  {reason}", file=sys.stderr)
    for reason, count in report.excluded_boxes.items():
        if count:
            print(f"excluded {count} {reason} boxes", file=sys.stderr)


def _build_model(args):
    import rpn_tf

    anchors = None if args.backbone.endswith("_fpn") else \
        rpn_tf.AnchorConfig(stride=args.stride, scales=tuple(args.scales), ratios=tuple(args.ratios))
    return rpn_tf.RPNModel(tuple(args.image_size), anchors, backbone=args.backbone, weights=args.weights,
                           head_channels=args.head_channels, resize=args.resize,
                           target_encoder_config={"max_boxes": args.max_boxes})


def command_train(args):
    import keras
    import tensorflow as tf

    os.makedirs(args.out, exist_ok=True)
    model = _build_model(args)
    dataset = (load_dataset(args).shuffle(256, reshuffle_each_iteration=True)
               .map(model.target_encoder, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(args.batch_size).prefetch(tf.data.AUTOTUNE))
    from rpn_tf.modeling.callbacks import AtomicCheckpoint, CrashSafeBackup, save_atomically

    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    # Resume: an interrupted run (even killed mid-write) restarts from its last finished epoch when run again with
    # the same --out.
    backup = CrashSafeBackup(os.path.join(args.out, "backup"))
    initial_epoch = backup.restore(model)
    validation = None
    if args.val_data:
        validation = (load_dataset(args, args.val_data).map(model.target_encoder, num_parallel_calls=tf.data.AUTOTUNE)
                      .batch(args.batch_size).prefetch(tf.data.AUTOTUNE))
    # With validation data the checkpoint is the best model by validation recall@300 (IoU 0.5), else the last.
    monitor = f"val_recall@{model.recall_top_n}_iou0.5" if validation is not None else None
    callbacks = [AtomicCheckpoint(os.path.join(args.out, "checkpoint.keras"), monitor=monitor),
                 keras.callbacks.TensorBoard(os.path.join(args.out, "logs")), backup]
    start = time.perf_counter()
    model.fit(dataset, epochs=args.epochs, initial_epoch=initial_epoch, callbacks=callbacks,
              validation_data=validation, verbose=1 if sys.stdout.isatty() else 2)
    path = os.path.join(args.out, "model.keras")
    save_atomically(model, path)
    print(f"trained in {time.perf_counter() - start:.0f} s; saved {path}")
    return 0


def command_evaluate(args):
    import keras

    from rpn_tf import evaluation

    model = keras.models.load_model(args.model)
    dataset = load_dataset(args)
    results = evaluation.evaluate_recall(model, dataset, tuple(args.top_n))
    for key, value in results.items():
        print(f"{key}: {value:.4f}")
    if args.diagnose:
        waterfall = evaluation.recall_waterfall(model, dataset, tuple(args.top_n))
        print("recall waterfall (where recall is lost):")
        print(evaluation.format_waterfall(waterfall))
        evaluation.plot_waterfall(waterfall, args.plot, title=f"recall waterfall of {os.path.basename(args.model)}")
        print(f"wrote {args.plot}")
        results = {"recall": results, "waterfall": waterfall}
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)
    return 0


def command_export(args):
    from rpn_tf.serving.exporter import export_saved_model, load_model

    try:
        model = load_model(args.model, args.config)
        jpeg = None
        if args.warmup_image:
            with open(args.warmup_image, "rb") as file:
                jpeg = file.read()
        path = export_saved_model(model, args.base_dir, args.name, args.version, warmup_jpeg=jpeg)
    except (FileNotFoundError, FileExistsError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def command_predict(args):
    import tensorflow as tf

    from rpn_tf.serving import RpnServingModule, load_model
    from rpn_tf.tools.visualize import RED, draw_boxes, write_png

    if os.path.isdir(args.input):
        paths = sorted(p for p in glob.glob(os.path.join(args.input, "*")) if p.lower().endswith(IMAGE_EXTENSIONS))
    else:
        paths = [args.input]
    if not paths or not all(os.path.exists(p) for p in paths):
        raise SystemExit(f"error: no images found at {args.input}")
    module = RpnServingModule(load_model(args.model, args.config))
    serve = tf.function(module.serve_encoded_images)
    os.makedirs(args.out, exist_ok=True)
    failed = 0
    for path in paths:
        data = tf.io.read_file(path)
        try:
            outputs = serve(tf.reshape(data, [1]))
        except tf.errors.InvalidArgumentError as error:
            reason = error.message.strip().splitlines()[0][:300]
            if not args.skip_errors:
                print(f"error: {path}: not a readable image ({reason}); --skip-errors skips such files",
                      file=sys.stderr)
                return 2
            print(f"warning: skipped {path}: not a readable image ({reason})", file=sys.stderr)
            failed += 1
            continue
        count = min(int(outputs["num_proposals"][0]), args.top_n)
        boxes = outputs["proposal_boxes"].numpy()[0, :count]
        scores = outputs["proposal_scores"].numpy()[0, :count]
        image = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
        stem = os.path.splitext(os.path.basename(path))[0]
        write_png(os.path.join(args.out, f"{stem}_proposals.png"), draw_boxes(image, [(boxes, RED)]))
        with open(os.path.join(args.out, f"{stem}_proposals.json"), "w") as file:
            json.dump({"image": path, "boxes_yxyx": boxes.round(2).tolist(), "scores": scores.round(5).tolist()},
                      file)
        print(f"{path}: {count} proposals -> {os.path.join(args.out, stem + '_proposals.png')}")
    if failed:
        print(f"skipped {failed} of {len(paths)} images", file=sys.stderr)
    return 0


def command_visualize_targets(args):
    import rpn_tf
    from rpn_tf.tools.visualize import target_picture, write_png

    element = next(iter(load_dataset(args).skip(args.index)))
    anchors = rpn_tf.AnchorConfig(stride=args.stride, scales=tuple(args.scales), ratios=tuple(args.ratios))
    png, _, labels = target_picture(element["image"].numpy(), element["boxes"].numpy(), anchors)
    write_png(args.output, png)
    print(f"{(labels == 1).sum()} positive (red) and {(labels == 0).sum()} negative (blue) anchors of "
          f"{len(labels)}; GT green -> {args.output}")
    return 0


def command_demo(args):
    from rpn_tf.tools import demo

    argv = ["--out", args.out] + (["--epochs", str(args.epochs)] if args.epochs is not None else []) + \
        (["--recipe", args.recipe] if args.recipe else [])
    demo.main(argv)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="rpn-tf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an RPNModel on a dataset")
    _add_data_arguments(train)
    _add_model_arguments(train)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--out", default="rpn_run", help="checkpoints, TensorBoard logs and model.keras")
    train.add_argument("--val-data", default=None,
                       help="validation data in the same --format (evaluated each epoch; checkpoint.keras then keeps "
                            "the best model by validation recall@300 IoU 0.5)")
    train.set_defaults(run=command_train)

    evaluate = commands.add_parser("evaluate", help="recall@N (IoU 0.5 / 0.7) and AR@N of a trained model")
    evaluate.add_argument("model", help="a .keras file")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--top-n", type=int, nargs="+", default=(100, 300, 1000))
    evaluate.add_argument("--json", default=None, help="also write the results here")
    evaluate.add_argument("--diagnose", action="store_true",
                          help="also print the recall waterfall: recall of all anchors, of the decoded boxes, of "
                               "the top N before and after NMS, by object size, and the scores by anchor label")
    evaluate.add_argument("--plot", default="waterfall.png",
                          help="with --diagnose: PNG of recall vs N per stage (default: waterfall.png)")
    evaluate.set_defaults(run=command_evaluate)

    export = commands.add_parser("export", help="write a TF Serving SavedModel: BASE_DIR/NAME/VERSION/ with warmup "
                                                "records, written atomically")
    export.add_argument("model", help="a .keras file, or a .weights.h5 file with --config")
    export.add_argument("--base-dir", required=True, help="TF Serving model base path")
    export.add_argument("--name", default="rpn", help="served model name (default: rpn)")
    export.add_argument("--version", type=int, default=None, help="version number >= 1 (default: next free)")
    export.add_argument("--config", default=None, help="JSON of RPNModel.get_config(), for a weights file")
    export.add_argument("--warmup-image", default=None, help="JPEG for the warmup requests (default: synthetic)")
    export.set_defaults(run=command_export)

    predict = commands.add_parser("predict", help="draw the top-N proposals of an image or a folder")
    predict.add_argument("model", help="a .keras file (or weights with --config)")
    predict.add_argument("input", help="an image file or a folder of images")
    predict.add_argument("--config", default=None)
    predict.add_argument("--out", default="predictions")
    predict.add_argument("--top-n", type=int, default=50)
    predict.add_argument("--skip-errors", action="store_true",
                         help="skip unreadable images (named in a warning) instead of stopping at the first")
    predict.set_defaults(run=command_predict)

    visualize = commands.add_parser("visualize-targets", help="PNG of the anchors labelled positive / negative")
    _add_data_arguments(visualize)
    visualize.add_argument("--index", type=int, default=0, help="which image of the dataset")
    _add_anchor_arguments(visualize)
    visualize.add_argument("--output", default="targets.png")
    visualize.set_defaults(run=command_visualize_targets)

    demo = commands.add_parser("demo", help="train, evaluate, export and serve on the bundled real data")
    demo.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's, 30)")
    demo.add_argument("--recipe", default=None, help="training recipe (default: fpn; see docs/recipes.md)")
    demo.set_defaults(run=command_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
