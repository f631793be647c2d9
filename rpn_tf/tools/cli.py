"""The rpn-tf command line: train, evaluate, export, predict, convert, visualize-targets, data-service, native, demo.

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

import json
import os
import sys

from rpn_tf.tools.errors import UsageError
from rpn_tf.tools.options import MODELS, Formatter as _Formatter, Parser as _Parser, \
    add_data_arguments as _add_data_arguments, add_model_arguments as _add_model_arguments, anchor_config, \
    build_model, import_tensorflow, load_dataset, load_model_file, resolve  # noqa: F401 (build_model: API)
from rpn_tf.tools.predict import command_predict


def command_train(args):
    import_tensorflow()
    from rpn_tf.tools.training import train

    return train(args)


def command_evaluate(args):
    model = load_model_file(args.model)
    from rpn_tf import evaluation

    dataset, report = load_dataset(args)
    if hasattr(model, "detections_in_original_pixels"):
        return _evaluate_detector(model, dataset, report, args)
    if args.detections_json:
        raise UsageError("--detections-json needs a detector (FasterRCNN); an RPN gives proposals")
    results = evaluation.evaluate_recall(model, dataset, tuple(args.top_n))
    for key, value in results.items():
        print(f"{key}: {value:.4f}")
    if args.diagnose:
        results = {"recall": results, "waterfall": _diagnose(model, dataset, args)}
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)
    return 0


def _diagnose(rpn, dataset, args):
    """``--diagnose``: the RPN's recall waterfall, printed and plotted to ``args.plot``."""
    from rpn_tf import evaluation

    waterfall = evaluation.recall_waterfall(rpn, dataset, tuple(args.top_n))
    print("recall waterfall (where recall is lost):")
    print(evaluation.format_waterfall(waterfall))
    evaluation.plot_waterfall(waterfall, args.plot, title=f"recall waterfall of {os.path.basename(args.model)}")
    print(f"wrote {args.plot}")
    return waterfall


def _evaluate_detector(model, dataset, report, args):
    """COCO detection metrics (pycocotools) of a FasterRCNN, and COCO AR@N of its RPN's proposals: against the COCO
    JSON itself for --format coco (COCO's evaluation), else against the dataset's boxes (labelled so)."""
    from rpn_tf import coco_eval

    ground_truth = None
    if args.format == "coco":
        if args.tile:
            raise UsageError("--tile: COCO's evaluation is of the file's images, not of tiles")
        ground_truth = args.data
    # the model's classes → the JSON's category ids (from_coco's mapping for --category-ids contiguous)
    categories = report.categories if ground_truth and report is not None and report.categories else None
    results = {"detection": coco_eval.detection_metrics(model, dataset, ground_truth, categories,
                                                        results_json=args.detections_json),
               "proposals": coco_eval.proposal_metrics(model.rpn, dataset, tuple(args.top_n), ground_truth),
               "ground_truth": coco_eval.ground_truth_note(ground_truth)}
    if args.detections_json:
        print(f"wrote the detections (COCO results format) to {args.detections_json}")
    print(f"COCO detection metrics (pycocotools; {results['ground_truth']}; -1: no GT box of that size):")
    for key, value in results["detection"].items():
        print(f"  {key}: {value:.4f}")
    print(f"proposals of its RPN (pycocotools, useCats=0; {results['ground_truth']}):")
    for n in args.top_n:
        print(f"  AR@{n}: {results['proposals'][f'coco/AR@{n}']:.4f}  "
              f"recall@{n} IoU 0.5: {results['proposals'][f'coco/recall@{n}_iou0.5']:.4f}")
    if args.diagnose:  # of the detector's RPN
        results["waterfall"] = _diagnose(model.rpn, dataset, args)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)
    return 0


def command_export(args):
    model = load_model_file(args.model, args.config)
    from rpn_tf.serving.exporter import export_saved_model

    jpeg = None
    if args.warmup_image:
        if not os.path.isfile(args.warmup_image):
            raise UsageError(f"--warmup-image: no such file: {args.warmup_image}")
        with open(args.warmup_image, "rb") as file:
            jpeg = file.read()
    try:
        path = export_saved_model(model, args.base_dir, args.name, args.version, warmup_jpeg=jpeg, nms=args.nms)
    except (FileExistsError, ValueError, TypeError) as error:
        raise UsageError(str(error)) from None
    print(path)
    return 0


def command_visualize_targets(args):
    import_tensorflow()
    from rpn_tf.tools.visualize import target_picture, write_png

    dataset, _ = load_dataset(args)
    element = next(iter(dataset.skip(args.index)), None)
    if element is None:
        count = sum(1 for _ in dataset)
        raise UsageError(f"--index {args.index} is past the end of the dataset ({count} images: 0-{count - 1})")
    png, _, labels = target_picture(element["image"].numpy(), element["boxes"].numpy(), anchor_config(args),
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


def command_convert(args):
    import_tensorflow()
    from rpn_tf.modeling.faster_rcnn import FasterRCNN
    from rpn_tf.modeling.rpn_model import RPNModel

    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"no such checkpoint file: {args.checkpoint}")
    if not args.out.endswith(".keras"):
        raise UsageError(f"--out must be a .keras file, got {args.out}")
    epsilon = args.batch_norm_epsilon if args.batch_norm_epsilon == "auto" else float(args.batch_norm_epsilon)
    builder = RPNModel if args.rpn_only else FasterRCNN
    model = builder.from_torchvision(args.checkpoint, batch_norm_epsilon=epsilon,
                                     trainable_backbone_layers=args.trainable_backbone_layers,
                                     image_size=tuple(args.image_size))
    from rpn_tf.modeling.callbacks import save_atomically

    save_atomically(model, args.out)
    what = "RPN" if args.rpn_only else f"FasterRCNN with {model.num_classes} classes"
    print(f"wrote {args.out}: torchvision's fasterrcnn_resnet50_fpn as an rpn-tf {what}")
    return 0


def command_demo(args):
    import_tensorflow()
    from rpn_tf.tools import demo

    argv = ["--out", args.out] + (["--epochs", str(args.epochs)] if args.epochs is not None else []) + \
        (["--recipe", args.recipe] if args.recipe else []) + \
        (["--detector-epochs", str(args.detector_epochs)] if args.detector_epochs is not None else []) + \
        ["--seed", str(args.seed)]
    demo.main(argv)
    return 0


def build_parser():
    parser = _Parser(prog="rpn-tf", description=__doc__, formatter_class=_Formatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train an RPNModel (or a FasterRCNN) on a dataset",
                                formatter_class=_Formatter,
                                description="Train an RPNModel, or with --model faster_rcnn a FasterRCNN. Model "
                                            "settings come from --preset (article by default); options given "
                                            "override them.")
    _add_data_arguments(train)
    _add_model_arguments(train)
    train.add_argument("--init", default=None, metavar="MODEL.keras",
                       help="start from this model — its architecture and weights (e.g. written by rpn-tf convert) — "
                            "instead of building one from --preset; a detector's class predictor is replaced when "
                            "--num-classes differs (COCO's 90 classes → yours)")
    train.add_argument("--model", choices=MODELS, default="rpn",
                       help="rpn: the RPN alone; faster_rcnn: the RPN with a Fast R-CNN second stage (ROI Align, "
                            "2 x FC box head), trained jointly")
    train.add_argument("--num-classes", type=int, default=None,
                       help="--model faster_rcnn: object classes, background excluded (default: the preset's; "
                            "deepforest: 1)")
    train.add_argument("--representation-size", type=int, default=None,
                       help="--model faster_rcnn: width of the box head's two FC layers (default: the preset's; "
                            "1024, deepforest 256)")
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

    evaluate = commands.add_parser("evaluate", help="recall@N (IoU 0.5 / 0.7) and AR@N of a trained RPN; COCO AP "
                                                    "(pycocotools) of a FasterRCNN",
                                   formatter_class=_Formatter)
    evaluate.add_argument("model", help="a .keras file written by rpn-tf train")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--top-n", type=int, nargs="+", default=[100, 300, 1000], help="proposal counts N")
    evaluate.add_argument("--json", default=None, help="also write the results to this file")
    evaluate.add_argument("--detections-json", default=None, metavar="FILE",
                          help="a detector's detections as a COCO results file (image and category ids of the "
                               "--format coco JSON), for COCOeval")
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
    export.add_argument("--nms", choices=("combined", "padded"), default="combined",
                        help="NMS in the served graph: combined (CPU kernels, fastest on a CPU server) or padded "
                             "(every op has a GPU kernel); recorded in assets.extra/rpn_tf_export.json")
    export.set_defaults(run=command_export)

    predict = commands.add_parser("predict", help="draw the top-N proposals (a FasterRCNN: detections) of an image "
                                                  "or a folder of images",
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

    convert = commands.add_parser(
        "convert", formatter_class=_Formatter, help="convert a torchvision Faster R-CNN checkpoint to a .keras model",
        description="Converts a torchvision fasterrcnn_resnet50_fpn checkpoint (.pth, read without torch; or "
                    ".safetensors) into an rpn-tf FasterRCNN (or its RPN alone) that gives torchvision's proposals "
                    "and detections, fine-tunes with rpn-tf train / fit and exports with rpn-tf export.")
    convert.add_argument("source", choices=("torchvision",), help="the checkpoint's library")
    convert.add_argument("checkpoint", help="the checkpoint file (e.g. fasterrcnn_resnet50_fpn_coco-258fb6c6.pth)")
    convert.add_argument("--out", required=True, help="the .keras file to write")
    convert.add_argument("--rpn-only", action="store_true", help="the RPN alone (backbone + RPN head)")
    convert.add_argument("--batch-norm-epsilon", default="auto",
                         help="auto: 0 for FrozenBatchNorm2d checkpoints (the COCO weights), 1e-5 otherwise")
    convert.add_argument("--trainable-backbone-layers", type=int, default=3,
                         help="torchvision's: ResNet stages that train when fine-tuned (0-5)")
    convert.add_argument("--image-size", type=int, nargs=2, default=[1344, 1344], metavar=("H", "W"),
                         help="the training canvas of the tf.data encoder (predict and serving use each batch's own)")
    convert.set_defaults(run=command_convert)

    demo = commands.add_parser("demo", help="train, evaluate, export and serve the RPN and a FasterRCNN on the "
                                            "bundled real data",
                               formatter_class=_Formatter)
    demo.add_argument("--out", default="demo_output", help="output folder")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's, 30)")
    demo.add_argument("--recipe", default=None, help="training recipe (default: fpn; see docs/recipes.md)")
    demo.add_argument("--detector-epochs", type=int, default=None,
                      help="epochs of the FasterRCNN trained on the RPN afterwards (default: 15; 0 skips it)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seeds initialisation, data order, augmentation and sampling (the README: 0, 1, 2)")
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
        from rpn_tf.data.records import clean_error_message, data_loss_error

        # a corrupt TFRecord file: named as a DataLossError; any TensorFlow error: without its internals
        message = clean_error_message(data_loss_error(error) or error) if tf is not None else str(error)
        print(f"error: {message.splitlines()[0] if message else type(error).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
