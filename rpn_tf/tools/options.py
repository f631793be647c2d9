"""The options the ``rpn-tf`` commands share: argument groups, preset resolution, datasets and models built from
arguments. Importing this module does not import TensorFlow (``rpn-tf --help`` stays instant)."""

from __future__ import annotations

import argparse
import os
import sys

from rpn_tf.tools.errors import UsageError
from rpn_tf.tools.presets import BACKBONE_STRIDES, BACKBONES, FPN_BACKBONES, PRESETS

FORMATS = ("deepforest", "voc", "coco", "tfrecord")
RESIZE_POLICIES = ("letterbox", "stretch", "shorter_side", "torchvision")
MODELS = ("rpn", "faster_rcnn")


def _cuda_driver_present():
    """Whether an NVIDIA driver is installed (its kernel module or ``libcuda``)."""
    import ctypes.util

    return os.path.exists("/proc/driver/nvidia/version") or ctypes.util.find_library("cuda") is not None


def import_tensorflow():
    """Imports TensorFlow with its start-up chatter hidden: the lines it prints while importing (oneDNN, CUDA stubs,
    CPU features) go to /dev/null, and — unless the user set ``TF_CPP_MIN_LOG_LEVEL`` — its C++ log is limited to
    errors (level 3) on a machine without an NVIDIA driver, where its only error line is the meaningless "failed
    call to cuInit", and to warnings and errors (level 1) where a driver is installed, so a real GPU problem still
    shows. Failures still arrive as Python exceptions, reported in one line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if _cuda_driver_present() else "3")
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


class Parser(argparse.ArgumentParser):
    """Argument mistakes in one line (and exit status 2), pointing at --help."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, unless its help already says it (or it is a flag or unset)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        default = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        return f"{text} (default: {default})"


def add_data_arguments(parser, data_help="dataset path: see --format"):
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="dataset format (required, except with --preset deepforest)")
    parser.add_argument("--data", default=None, help=data_help)
    parser.add_argument("--images", default=None, help="image folder (--format coco)")
    parser.add_argument("--category-ids", choices=("raw", "contiguous"), default="raw",
                        help="--format coco: class ids are COCO's category ids (raw) or 1..K in ascending id order "
                             "(contiguous, for --model faster_rcnn --num-classes K)")
    parser.add_argument("--skip-errors", action="store_true",
                        help="skip malformed records and unreadable images (named and counted) instead of stopping "
                             "at the first")
    parser.add_argument("--tile", type=int, default=None,
                        help="cut images into tiles of this size (train / visualize-targets default to the preset's: "
                             "deepforest 400; else no tiling)")
    parser.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in pixels (default: tile / 4)")


def add_model_arguments(parser):
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
    if getattr(args, "init", None):
        if not os.path.isfile(args.init):
            raise UsageError(f"--init: no such model file: {args.init}")
    elif getattr(args, "model", None) == "faster_rcnn":
        if args.num_classes is None:
            args.num_classes = preset.num_classes
        if args.num_classes is None:
            raise UsageError("--num-classes is required with --model faster_rcnn (object classes, background "
                             "excluded); only --preset deepforest implies one (1: tree)")
        if args.num_classes < 1:
            raise UsageError(f"--num-classes must be >= 1, got {args.num_classes}")
        if args.representation_size is None:
            args.representation_size = preset.representation_size
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
        dataset, report = adapters.from_coco(data, args.images, on_error=on_error, category_ids=args.category_ids)
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


def anchor_config(args):
    import rpn_tf

    if args.backbone in FPN_BACKBONES:
        return rpn_tf.MultiLevelAnchorConfig.fpn()
    return rpn_tf.AnchorConfig(stride=args.stride, scales=tuple(args.scales), ratios=tuple(args.ratios))


def build_model(args):
    """The ``RPNModel`` that ``args`` describe, or with ``--model faster_rcnn`` a ``FasterRCNN`` on it."""
    import rpn_tf

    rpn = build_rpn(args)
    if getattr(args, "model", "rpn") != "faster_rcnn":
        return rpn
    return rpn_tf.FasterRCNN(args.num_classes, rpn=rpn, representation_size=args.representation_size)


def build_rpn(args):
    import rpn_tf

    stride = args.stride if args.backbone == "simple" else None
    return rpn_tf.RPNModel(tuple(args.image_size), anchor_config(args), backbone=args.backbone,
                           backbone_stride=stride, weights=args.weights, head_channels=args.head_channels,
                           resize=args.resize, freeze_backbone_layers=getattr(args, "freeze_backbone_layers", 0),
                           target_encoder_config={"max_boxes": args.max_boxes})


def load_model_file(path, config=None):
    """An ``RPNModel`` or ``FasterRCNN`` from a ``.keras`` file (or an ``RPNModel`` from weights with ``config``),
    or a ``UsageError`` naming the file."""
    if not os.path.isfile(path):
        raise UsageError(f"no such model file: {path}")
    import_tensorflow()
    from rpn_tf.serving.exporter import load_model

    try:
        return load_model(path, config)
    except (ValueError, TypeError, OSError, KeyError) as error:
        raise UsageError(f"{path} is not a loadable RPNModel or FasterRCNN file "
                         f"({str(error).splitlines()[0][:200]})") from None
