"""``rpn-tf predict``: proposals (an RPN) or detections (a FasterRCNN) of images, drawn and written as JSON."""

from __future__ import annotations

import glob
import json
import os
import sys

from rpn_tf.tools.errors import UsageError
from rpn_tf.tools.options import import_tensorflow, load_model_file


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


def command_predict(args):
    if os.path.isdir(args.input):
        paths = sorted(p for p in glob.glob(os.path.join(args.input, "*")) if p.lower().endswith(IMAGE_EXTENSIONS))
    else:
        paths = [args.input]
    if not paths or not all(os.path.exists(p) for p in paths):
        raise UsageError(f"no images found at {args.input}")
    model = load_model_file(args.model, args.config)
    tf = import_tensorflow()
    from rpn_tf.serving import RpnServingModule
    from rpn_tf.tools.visualize import proposals_picture, write_png

    module = RpnServingModule(model)
    detector = module.is_detector
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
                raise UsageError(f"{path}: not a readable image ({reason}); --skip-errors skips such files") from None
            print(f"warning: skipped {path}: not a readable image ({reason})", file=sys.stderr)
            failed += 1
            continue
        kind = "detection" if detector else "proposal"
        count = min(int(outputs[f"num_{kind}s"][0]), args.top_n)
        boxes = outputs[f"{kind}_boxes"].numpy()[0, :count]
        scores = outputs[f"{kind}_scores"].numpy()[0, :count]
        image = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
        stem = os.path.splitext(os.path.basename(path))[0]
        picture = proposals_picture(image, boxes, scores, label=f"{kind}s")
        write_png(os.path.join(args.out, f"{stem}_{kind}s.png"), picture)
        record = {"image": path, "boxes_yxyx": boxes.round(2).tolist(), "scores": scores.round(5).tolist()}
        if detector:
            record["classes"] = outputs["detection_classes"].numpy()[0, :count].astype(int).tolist()
        with open(os.path.join(args.out, f"{stem}_{kind}s.json"), "w") as file:
            json.dump(record, file)
        print(f"{path}: {count} {kind}s -> {os.path.join(args.out, f'{stem}_{kind}s.png')}")
    if failed:
        print(f"skipped {failed} of {len(paths)} images", file=sys.stderr)
    return 0
