"""The rpn-tf command line: train, evaluate, export, predict, visualize-targets, data-service, native, demo.

Models come from a preset (--preset article | fpn | deepforest; see "rpn-tf train --help"); any option given
overrides the preset's value. Datasets (--format):
  deepforest  the images bundled with the deepforest package (--data names, comma-separated; default: the YELL
              training images)
  voc         a Pascal VOC folder (--data ROOT holding Annotations/ and JPEGImages/)
  coco        COCO instances JSON (--data FILE --images DIR)
  tfrecord    TF Object Detection API TFRecords (--data GLOB)
--tile SIZE cuts images into SIZE x SIZE tiles (--tile-overlap, default SIZE/4).
Every ordinary mistake (a wrong path, a missing option, a model file of another kind) ends with one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from rpn_tf.tools.errors import UsageError
from rpn_tf.tools.presets import BACKBONE_STRIDES, BACKBONES, FPN_BACKBONES, PRESETS

FORMATS = ("deepforest", "voc", "coco", "tfrecord")
RESIZE_POLICIES = ("letterbox", "stretch", "shorter_side")


def import_tensorflow():
    """Imports TensorFlow with its start-up chatter hidden (C++ log lines on stderr, e.g. "failed call to cuInit" on
    a machine without a GPU); failures still arrive as Python exceptions, reported in one line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf
            import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf


class _Parser(argparse.ArgumentParser):
    """Argument mistakes in one line (and exit status 2), pointing at --help."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, unless its help already says it (or it is a flag or unset)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        default = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        return f"{text} (default: {default})"


def _add_data_arguments(parser, data_help="dataset path: see --format"):
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="dataset format (required, except with --preset deepforest)")
    parser.add_argument("--data", default=None, help=data_help)
    parser.add_argument("--images", default=None, help="image folder (--format coco)")
    parser.add_argument("--skip-errors", action="store_true",
                        help="skip malformed records and unreadable images (named and counted) instead of stopping "
                             "at the first")
    parser.add_argument("--tile", type=int, default=None,
                        help="cut images into tiles of this size (train / visualize-targets default to the preset's: "
                             "deepforest 400; else no tiling)")
    parser.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in pixels (default: tile / 4)")


def _add_model_arguments(parser):
    parser.add_argument("--preset", choices=sorted(PRESETS), default="article",
                        help="; ".join(f"{name}: {preset.summary}" for name, preset in PRESETS.items()))
    parser.add_argument("--backbone", choices=BACKBONES, default=None,
                        help="feature extractor (default: the preset's); *_fpn are feature pyramids with one anchor "
                             "size per level (32-512 px; --stride/--scales do not apply)")
    parser.add_argument("--weights", default=None,
                        help="backbone weights: 'imagenet' (downloads once) or a .weights.h5 / .h5 file "
                             "(default: random initialisation)")
    parser.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="network input canvas (default: the preset's)")
    parser.add_argument("--stride", type=int, default=None,
                        help="anchor / feature stride (default: the backbone's: 16; the simple backbone also "
                             "takes 4, 8 or 32)")
    parser.add_argument("--scales", type=float, nargs="+", default=None,
                        help="anchor scales in units of the stride (default: the preset's anchor sizes in pixels at "
                             "this stride; article: 8 16 32 = 128/256/512 px)")
    parser.add_argument("--ratios", type=float, nargs="+", default=None,
                        help="anchor aspect ratios h/w (default: the preset's; article: 0.5 1 2)")
    parser.add_argument("--head-channels", type=int, default=None,
                        help="channels of the RPN head's 3x3 conv (default: the preset's, else 512 or the pyramid's)")
    parser.add_argument("--max-boxes", type=int, default=None,
                        help="GT boxes per image at most (default: the preset's; 100)")
    parser.add_argument("--resize", choices=RESIZE_POLICIES, default="letterbox",
                        help="how images of any size go onto the canvas")


def resolve(args):
    """Fills every model / data option left unset from ``--preset``; checks paths. Returns ``args``."""
    if not hasattr(args, "preset"):
        if getattr(args, "format", "") is None:
            raise UsageError(f"--format is required ({', '.join(FORMATS)})")
        return args
    preset = PRESETS[args.preset]
    if args.backbone is None:
        args.backbone = preset.backbone
    if args.image_size is None:
        args.image_size = list(preset.image_size)
    if args.stride is None and args.backbone not in FPN_BACKBONES:
        args.stride = preset.stride if (preset.stride and args.backbone == preset.backbone) else \
            BACKBONE_STRIDES[args.backbone]
    if args.scales is None:  # the preset's anchor sizes in pixels, whatever the stride
        preset_stride = preset.stride or BACKBONE_STRIDES.get(preset.backbone, 16)
        args.scales = [scale * preset_stride / (args.stride or preset_stride) for scale in preset.scales]
    args.ratios = args.ratios or list(preset.ratios)
    if args.head_channels is None:
        args.head_channels = preset.head_channels
    if args.max_boxes is None:
        args.max_boxes = preset.max_boxes
    if hasattr(args, "format"):
        if args.format is None:
            if preset.data_format is None:
                raise UsageError(f"--format is required ({', '.join(FORMATS)}); only --preset deepforest implies one")
            args.format = preset.data_format
        if args.tile is None and preset.tile_size and args.format == preset.data_format:
            args.tile, args.tile_overlap = preset.tile_size, preset.tile_overlap if args.tile_overlap is None \
                else args.tile_overlap
    if getattr(args, "optimizer", None) is None and hasattr(args, "optimizer"):
        args.optimizer = preset.optimizer
    if getattr(args, "learning_rate", None) is None and hasattr(args, "learning_rate"):
        args.learning_rate = preset.learning_rate
    if args.weights not in (None, "imagenet") and not os.path.isfile(args.weights):
        raise UsageError(f"--weights: no such file: {args.weights}")
    return args


def load_dataset(args, data=None):
    """``(dataset, report)``: the element dataset (``image``, ``boxes``, ``classes``) that ``args`` describe
    (``data`` overrides ``args.data``, e.g. for ``--val-data``) and the adapter's report (or ``None``)."""
    from rpn_tf.data import adapters

    data = args.data if data is None else data
    on_error = "skip" if args.skip_errors else "raise"
    report = None
    if args.format == "deepforest":
        report = adapters.SkipReport()
        dataset = adapters.from_deepforest(data.split(",") if data else None, on_error=on_error, report=report)
    elif data is None:
        raise UsageError(f"--data is required for --format {args.format}")
    elif args.format in ("voc", "coco") and not os.path.exists(data):
        raise UsageError(f"--data: no such {'folder' if args.format == 'voc' else 'file'}: {data}")
    elif args.format == "voc":
        dataset, report, _ = adapters.from_voc(data, on_error=on_error)
    elif args.format == "coco":
        if args.images is None:
            raise UsageError("--images is required for --format coco")
        dataset, report = adapters.from_coco(data, args.images, on_error=on_error)
    else:
        dataset = adapters.read_od_tfrecords(data, on_error=on_error)
    if report is not None:
        _print_report(report)
    if args.tile:
        overlap = args.tile // 4 if args.tile_overlap is None else args.tile_overlap
        dataset = adapters.tile_dataset(dataset, args.tile, overlap)
    return dataset, report


def _print_report(report):
    if report.skipped:
        print(f"skipped {len(report.skipped)} malformed records", file=sys.stderr)
        for name, reason in list(report.skipped.items())[:10]:
            print(f"  {reason}", file=sys.stderr)


def _anchor_config(args):
    import rpn_tf

    if args.backbone in FPN_BACKBONES:
        return rpn_tf.MultiLevelAnchorConfig.fpn()
    return rpn_tf.AnchorConfig(stride=args.stride, scales=tuple(args.scales), ratios=tuple(args.ratios))


def build_model(args):
    import rpn_tf

    stride = args.stride if args.backbone == "simple" else None
    return rpn_tf.RPNModel(tuple(args.image_size), _anchor_config(args), backbone=args.backbone,
                           backbone_stride=stride, weights=args.weights, head_channels=args.head_channels,
                           resize=args.resize, freeze_backbone_layers=getattr(args, "freeze_backbone_layers", 0),
                           target_encoder_config={"max_boxes": args.max_boxes})


def load_rpn_model(path, config=None):
    """An ``RPNModel`` from a ``.keras`` file (or weights with ``config``), or a ``UsageError`` naming the file."""
    if not os.path.isfile(path):
        raise UsageError(f"no such model file: {path}")
    import_tensorflow()
    from rpn_tf.modeling.rpn_model import RPNModel
    from rpn_tf.serving.exporter import load_model

    try:
        model = load_model(path, config)
    except (ValueError, TypeError, OSError, KeyError) as error:
        raise UsageError(f"{path} is not a loadable RPNModel file ({str(error).splitlines()[0][:200]})") from None
    if not isinstance(model, RPNModel):
        raise UsageError(f"{path} holds a {type(model).__name__}, not an RPNModel")
    return model


def command_train(args):
    import_tensorflow()
    from rpn_tf.tools.training import train

    return train(args)


def command_evaluate(args):
    model = load_rpn_model(args.model)
    from rpn_tf import evaluation

    dataset, _ = load_dataset(args)
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
    model = load_rpn_model(args.model, args.config)
    from rpn_tf.serving.exporter import export_saved_model

    jpeg = None
    if args.warmup_image:
        if not os.path.isfile(args.warmup_image):
            raise UsageError(f"--warmup-image: no such file: {args.warmup_image}")
        with open(args.warmup_image, "rb") as file:
            jpeg = file.read()
    try:
        path = export_saved_model(model, args.base_dir, args.name, args.version, warmup_jpeg=jpeg)
    except (FileExistsError, ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    print(path)
    return 0


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def command_predict(args):
    if os.path.isdir(args.input):
        paths = sorted(p for p in glob.glob(os.path.join(args.input, "*")) if p.lower().endswith(IMAGE_EXTENSIONS))
    else:
        paths = [args.input]
    if not paths or not all(os.path.exists(p) for p in paths):
        raise UsageError(f"no images found at {args.input}")
    model = load_rpn_model(args.model, args.config)
    tf = import_tensorflow()
    from rpn_tf.serving import RpnServingModule
    from rpn_tf.tools.visualize import proposals_picture, write_png

    serve = tf.function(RpnServingModule(model).serve_encoded_images)
    os.makedirs(args.out, exist_ok=True)
    failed = 0
    for path in paths:
        data = tf.io.read_file(path)
        try:
            outputs = serve(tf.reshape(data, [1]))
        except tf.errors.InvalidArgumentError as error:
            reason = error.message.strip().splitlines()[0][:300]
            if not args.skip_errors:
                raise UsageError(f"{path}: not a readable image ({reason}); --skip-errors skips such files") from None
            print(f"warning: skipped {path}: not a readable image ({reason})", file=sys.stderr)
            failed += 1
            continue
        count = min(int(outputs["num_proposals"][0]), args.top_n)
        boxes = outputs["proposal_boxes"].numpy()[0, :count]
        scores = outputs["proposal_scores"].numpy()[0, :count]
        image = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
        stem = os.path.splitext(os.path.basename(path))[0]
        write_png(os.path.join(args.out, f"{stem}_proposals.png"), proposals_picture(image, boxes, scores))
        with open(os.path.join(args.out, f"{stem}_proposals.json"), "w") as file:
            json.dump({"image": path, "boxes_yxyx": boxes.round(2).tolist(), "scores": scores.round(5).tolist()},
                      file)
        print(f"{path}: {count} proposals -> {os.path.join(args.out, stem + '_proposals.png')}")
    if failed:
        print(f"skipped {failed} of {len(paths)} images", file=sys.stderr)
    return 0


def command_visualize_targets(args):
    import_tensorflow()
    from rpn_tf.tools.visualize import target_picture, write_png

    dataset, _ = load_dataset(args)
    element = next(iter(dataset.skip(args.index)), None)
    if element is None:
        count = sum(1 for _ in dataset)
        raise UsageError(f"--index {args.index} is past the end of the dataset ({count} images: 0-{count - 1})")
    png, _, labels = target_picture(element["image"].numpy(), element["boxes"].numpy(), _anchor_config(args),
                                    max_negatives=args.max_negatives, image_size=tuple(args.image_size),
                                    resize=args.resize)
    write_png(args.output, png)
    print(f"{(labels == 1).sum()} positive (red) and {(labels == 0).sum()} negative anchors sampled "
          f"({min(args.max_negatives, (labels == 0).sum())} drawn, blue) of {len(labels)} at "
          f"{args.image_size[0]}x{args.image_size[1]}; GT green -> {args.output}")
    return 0


def command_data_service(args):
    import_tensorflow()
    from rpn_tf.data import service

    if args.role == "dispatcher":
        server = service.start_dispatcher(args.port, args.work_dir)
        print(f"tf.data service dispatcher at {server.target} (trainers: --data-service "
              f"grpc://THIS_HOST:{args.port})", flush=True)
    else:
        if not args.dispatcher:
            raise UsageError("--dispatcher HOST:PORT is required for a worker")
        server = service.start_worker(args.dispatcher, args.port, args.worker_address)
        print(f"tf.data service worker on port {args.port}, registered with {args.dispatcher}", flush=True)
    server.join()
    return 0


def command_native(args):
    import_tensorflow()
    from rpn_tf.ops import native

    if args.action == "build":
        print(f"built: {native.build(force=args.force)}")
    elif args.action == "clean":
        removed = native.clean(everything=args.all)
        print(f"removed {len(removed)} cached build(s) from {native.cache_dir()}")
    for key, value in native.status().items():
        print(f"{key}: {', '.join(value) or 'none' if isinstance(value, list) else value}")
    return 0


def command_demo(args):
    from rpn_tf.tools import demo

    argv = ["--out", args.out] + (["--epochs", str(args.epochs)] if args.epochs is not None else []) + \
        (["--recipe", args.recipe] if args.recipe else [])
    demo.main(argv)
    return 0


def build_parser():
    parser = _Parser(prog="rpn-tf", description=__doc__, formatter_class=_Formatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train an RPNModel on a dataset", formatter_class=_Formatter,
                                description="Train an RPNModel. Model settings come from --preset (article by "
                                            "default); options given override them.")
    _add_data_arguments(train)
    _add_model_arguments(train)
    train.add_argument("--epochs", type=int, default=10, help="training epochs")
    train.add_argument("--batch-size", type=int, default=8, help="images per step (the global batch: split over "
                                                                "the replicas of a --strategy)")
    train.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=None,
                       help="sgd: momentum 0.9, as in the article (default: the preset's)")
    train.add_argument("--learning-rate", type=float, default=None, help="initial learning rate (default: the "
                                                                          "preset's)")
    train.add_argument("--lr-schedule", choices=("constant", "cosine", "step"), default="constant",
                       help="cosine: decays to 0 over the run; step: x0.1 after 75%% of the steps (the article's "
                            "60k + 20k iterations)")
    train.add_argument("--freeze-backbone-layers", type=int, default=0,
                       help="keep the backbone's first N layers fixed (the article fine-tunes VGG16 from conv3_1: 10)")
    train.add_argument("--out", default="rpn_run", help="checkpoints, TensorBoard logs and model.keras")
    train.add_argument("--val-data", default=None,
                       help="validation data in the same --format, evaluated each epoch; checkpoint.keras then keeps "
                            "the best model by validation recall@300 (IoU 0.5)")
    train.add_argument("--mixed-precision", action="store_true",
                       help="mixed_float16 compute on GPUs, mixed_bfloat16 with --strategy tpu")
    train.add_argument("--jit-compile", action="store_true", help="compile the training step with XLA")
    train.add_argument("--strategy", choices=("default", "mirrored", "multi_worker", "tpu"), default="default",
                       help="mirrored: all local GPUs (model.fit); multi_worker: the workers of TF_CONFIG, tpu: a "
                            "TPU (a TensorFlow-native loop: Keras's fit does not run under these)")
    train.add_argument("--tpu", default=None, help="with --strategy tpu: the TPU name or grpc:// address")
    train.add_argument("--data-service", default=None, metavar="grpc://HOST:PORT",
                       help="run the input pipeline (decoding, tiling, target encoding) on tf.data service workers "
                            "(start them with rpn-tf data-service)")
    train.add_argument("--count-dataset", action="store_true",
                       help="count every image and box before training (decodes the dataset once); by default the "
                            "summary reads at most 100 images unless the schedule or the strategy needs the count")
    train.add_argument("--data-service-mode", choices=("parallel_epochs", "distributed_epoch"),
                       default="distributed_epoch",
                       help="distributed_epoch: every example once per epoch; parallel_epochs: every worker "
                            "produces the whole dataset")
    train.set_defaults(run=command_train)

    evaluate = commands.add_parser("evaluate", help="recall@N (IoU 0.5 / 0.7) and AR@N of a trained model",
                                   formatter_class=_Formatter)
    evaluate.add_argument("model", help="a .keras file written by rpn-tf train")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--top-n", type=int, nargs="+", default=[100, 300, 1000], help="proposal counts N")
    evaluate.add_argument("--json", default=None, help="also write the results to this file")
    evaluate.add_argument("--diagnose", action="store_true",
                          help="also print the recall waterfall: recall of all anchors, of the decoded boxes, of "
                               "the top N before and after NMS, by object size, and the scores by anchor label")
    evaluate.add_argument("--plot", default="waterfall.png", help="with --diagnose: PNG of recall vs N per stage")
    evaluate.set_defaults(run=command_evaluate)

    export = commands.add_parser("export", help="write a TF Serving SavedModel: BASE_DIR/NAME/VERSION/ with warmup "
                                                "records, written atomically", formatter_class=_Formatter)
    export.add_argument("model", help="a .keras file, or a .weights.h5 file with --config")
    export.add_argument("--base-dir", required=True, help="TF Serving model base path")
    export.add_argument("--name", default="rpn", help="served model name")
    export.add_argument("--version", type=int, default=None, help="version number >= 1 (default: the next free)")
    export.add_argument("--config", default=None, help="JSON of RPNModel.get_config(), for a weights file")
    export.add_argument("--warmup-image", default=None, help="JPEG for the warmup requests (default: synthetic)")
    export.set_defaults(run=command_export)

    predict = commands.add_parser("predict", help="draw the top-N proposals of an image or a folder of images",
                                  formatter_class=_Formatter)
    predict.add_argument("model", help="a .keras file (or weights with --config)")
    predict.add_argument("input", help="an image file or a folder of images")
    predict.add_argument("--config", default=None, help="JSON of RPNModel.get_config(), for a weights file")
    predict.add_argument("--out", default="predictions", help="output folder (PNG and JSON per image)")
    predict.add_argument("--top-n", type=int, default=50, help="proposals drawn and written per image")
    predict.add_argument("--skip-errors", action="store_true",
                         help="skip unreadable images (named in a warning) instead of stopping at the first")
    predict.set_defaults(run=command_predict)

    visualize = commands.add_parser("visualize-targets", formatter_class=_Formatter,
                                    help="PNG of an image's training targets at the training geometry: GT, "
                                         "positive and (some) negative anchors")
    _add_data_arguments(visualize)
    visualize.add_argument("--index", type=int, default=0, help="which image of the dataset (from 0)")
    _add_model_arguments(visualize)
    visualize.add_argument("--max-negatives", type=int, default=20, help="negative anchors drawn at most")
    visualize.add_argument("--output", default="targets.png", help="PNG file to write")
    visualize.set_defaults(run=command_visualize_targets)

    data_service = commands.add_parser("data-service", formatter_class=_Formatter,
                                       help="run a tf.data service dispatcher or worker (for rpn-tf train "
                                            "--data-service)")
    data_service.add_argument("role", choices=("dispatcher", "worker"))
    data_service.add_argument("--port", type=int, default=5050, help="port to listen on")
    data_service.add_argument("--dispatcher", default=None, help="worker: the dispatcher's HOST:PORT")
    data_service.add_argument("--worker-address", default=None,
                              help="worker: HOST:PORT at which trainers reach it (default: localhost:PORT)")
    data_service.add_argument("--work-dir", default=None, help="dispatcher: a folder for fault-tolerant state")
    data_service.set_defaults(run=command_data_service)

    native_parser = commands.add_parser(
        "native", formatter_class=_Formatter, help="build, report or clean the optional native target-encoding "
                                                   "kernels (an opt-in: RPN_TF_NATIVE=1)",
        description="The native target-encoding kernels are an opt-in fast path for CPU-bound input hosts "
                    "(implementation=\"native\", or RPN_TF_NATIVE=1 for the whole process); by default rpn-tf uses "
                    "TensorFlow ops only. build: compile them once into the cache (for Docker images and "
                    "clusters; a failed build is remembered, --force retries); status: what is built, where, "
                    "with which compiler and flags; clean: remove builds of other TensorFlow versions or "
                    "sources (--all: every build).")
    native_parser.add_argument("action", choices=("build", "status", "clean"))
    native_parser.add_argument("--force", action="store_true", help="build: retry a build that failed before")
    native_parser.add_argument("--all", action="store_true", help="clean: remove every cached build")
    native_parser.set_defaults(run=command_native)

    demo = commands.add_parser("demo", help="train, evaluate, export and serve on the bundled real data",
                               formatter_class=_Formatter)
    demo.add_argument("--out", default="demo_output", help="output folder")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's, 30)")
    demo.add_argument("--recipe", default=None, help="training recipe (default: fpn; see docs/recipes.md)")
    demo.set_defaults(run=command_demo)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that every command stops the same way."""


def _on_sigterm(signum, frame):
    raise Terminated()


def interruption_line(args, terminated):
    """The one line printed when a command is stopped: what was kept and how to go on."""
    out = getattr(args, "out", None)
    kept = {
        "train": f"the last finished epoch is kept in {out} (backup/ or checkpoints/, and checkpoint.keras): run "
                 "the same command again to resume from it",
        "export": "no version folder is left half-written (versions appear whole): run the same command again",
        "predict": f"the pictures already written are in {out}: run the same command again to redo the rest",
        "evaluate": "nothing was written: run the same command again",
        "demo": f"what the demo finished is in {out}: run it again to start over",
    }.get(args.command, "nothing to resume")
    return f"interrupted by {'SIGTERM' if terminated else 'Ctrl-C'} during {args.command}: {kept}"


def main(argv=None):
    import signal
    import threading
    import warnings

    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    # Keras reads an interrupted input pipeline as "ran out of data" and warns so; rpn-tf's fit never sets
    # steps_per_epoch, so the warning can only be that misreading of Ctrl-C / SIGTERM.
    warnings.filterwarnings("ignore", message="Your input ran out of data")
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args):
    try:
        return args.run(resolve(args))
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM: one line, no traceback
        terminated = isinstance(interrupt, Terminated)
        print(interruption_line(args, terminated), file=sys.stderr, flush=True)
        return 143 if terminated else 130
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 — one line for the ordinary failures; RPN_TF_DEBUG=1 for the rest
        ordinary = (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError,
                    RuntimeError)
        tf = sys.modules.get("tensorflow")
        if tf is not None:
            ordinary += (tf.errors.OpError,)
        if os.environ.get("RPN_TF_DEBUG") or not isinstance(error, ordinary):
            raise
        message = getattr(error, "message", None) or str(error)
        print(f"error: {message.strip().splitlines()[0] if message.strip() else type(error).__name__}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
