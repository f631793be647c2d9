"""``python -m export MODEL --base-dir DIR [--name rpn] [--version N] [--config CONFIG.json]``.

Writes ``DIR/NAME/VERSION/`` — a SavedModel that TensorFlow Serving loads, with warmup records — from a
``.keras`` file, or from a weights file plus the model's config JSON.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a .keras file, or a .weights.h5 file with --config")
    parser.add_argument("--base-dir", required=True, help="TF Serving model base path")
    parser.add_argument("--name", default="rpn", help="served model name (default: rpn)")
    parser.add_argument("--version", type=int, default=None, help="version number (default: next free)")
    parser.add_argument("--config", default=None, help="JSON of RPNModel.get_config(), for a weights file")
    parser.add_argument("--warmup-image", default=None, help="JPEG for the warmup requests (default: synthetic)")
    args = parser.parse_args(argv)

    from export.exporter import export_saved_model, load_model

    try:
        model = load_model(args.model, args.config)
        jpeg = open(args.warmup_image, "rb").read() if args.warmup_image else None
        path = export_saved_model(model, args.base_dir, args.name, args.version, warmup_jpeg=jpeg)
    except (FileNotFoundError, FileExistsError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
