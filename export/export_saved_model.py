#!/usr/bin/env python3
"""Export a trained RPNModel for TensorFlow Serving (the same as ``rpn-tf export``).

    python export/export_saved_model.py MODEL.keras --base-dir serving [--name rpn] [--version N]
        [--config CONFIG.json] [--warmup-image IMAGE.jpg]

Writes ``serving/rpn/N/`` — a SavedModel with decoding, resizing, proposals and ROI sampling in the graph, plus
warmup records — atomically (a kill never leaves a half-written numeric version). Needs ``pip install rpn-tf``
(or ``pip install -e .`` in this repository); this folder is a deployment kit, not an installed package.
"""

import sys

from rpn_tf.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
