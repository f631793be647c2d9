"""rpn-tf beside torchvision, the same ``fasterrcnn_resnet50_fpn`` weights (``tests/torchvision_parity.py``), the
same photos, the same CPU cores, in one run: latency of ``predict`` (rpn-tf) / eager ``model(images)``
(torchvision) at batch 1 and 4, of rpn-tf's served call (``serving_default`` on PNG bytes, the SavedModel loaded as
TF Serving loads it), and of a training step at batch 2 (SGD; batch norm frozen on both sides).

Run with the project's environment; the torchvision side runs in an environment with torch + torchvision, started
from here in the same run (the two never share a process: their thread pools would compete)::

    python benchmarks/bench_vs_torchvision.py --torch-python /tmp/tv/bin/python [--repeats 5]

Prints one line per measurement (median of ``--repeats`` calls after a warm-up) and the ratios.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from torchvision_parity import SEED, load_photos, seeded_state_dict  # noqa: E402

TRAIN_SIZE = (800, 1216)  # rpn-tf's training canvas here: torchvision's for the landscape photos


def median_seconds(function, repeats):
    function()  # warm-up (tracing, first allocations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def photo_batch(photos, size):
    """``size`` photos of one size (rpn-tf's predict takes a batch of one size): the first landscape photo."""
    return [photos[1]] * size


def train_targets(photo):
    height, width = photo.shape[:2]
    boxes = np.array([[0.1 * height, 0.15 * width, 0.45 * height, 0.4 * width],
                      [0.5 * height, 0.55 * width, 0.9 * height, 0.95 * width]], np.float32)
    return boxes, np.array([3, 18], np.int64)


def torchvision_side(data_dir, repeats):
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.set_num_threads(os.cpu_count() or 2)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in seeded_state_dict(SEED).items()})
    model.eval()
    photos = load_photos(data_dir)
    results = {}
    for size in (1, 4):
        images = [torch.from_numpy(p).permute(2, 0, 1).float() / 255.0 for p in photo_batch(photos, size)]

        def infer(images=images):
            with torch.no_grad():
                model(images)

        results[f"predict batch {size}"] = median_seconds(infer, repeats)
    images = [torch.from_numpy(p).permute(2, 0, 1).float() / 255.0 for p in photo_batch(photos, 2)]
    targets = []
    for photo in photo_batch(photos, 2):
        boxes, labels = train_targets(photo)
        targets.append({"boxes": torch.from_numpy(boxes[:, [1, 0, 3, 2]]), "labels": torch.from_numpy(labels)})
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    model.train()
    for module in model.modules():  # frozen batch norm, as rpn-tf fine-tunes
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()

    def step():
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    results["train step batch 2"] = median_seconds(step, repeats)
    return results


def rpn_tf_side(data_dir, repeats):
    import keras
    import tensorflow as tf

    import rpn_tf
    from rpn_tf.serving import export_saved_model

    model = rpn_tf.FasterRCNN.from_torchvision(seeded_state_dict(SEED))
    photos = load_photos(data_dir)
    results = {}
    for size in (1, 4):
        batch = np.stack(photo_batch(photos, size))
        results[f"predict batch {size}"] = median_seconds(lambda batch=batch: model.predict(batch, verbose=0),
                                                          repeats)
    with tempfile.TemporaryDirectory() as folder:
        path = export_saved_model(model, folder, "bench")
        served = tf.saved_model.load(path).signatures["serving_default"]
        png = tf.io.encode_png(photos[1]).numpy()
        for size in (1, 4):
            request = tf.constant([png] * size)
            results[f"served call batch {size}"] = median_seconds(lambda request=request: served(
                encoded_images=request), repeats)
    trainer = rpn_tf.FasterRCNN.from_torchvision(seeded_state_dict(SEED), image_size=TRAIN_SIZE)
    trainer.compile(optimizer=keras.optimizers.SGD(1e-4, momentum=0.9))
    photos2 = photo_batch(photos, 2)
    boxes = [train_targets(p)[0] for p in photos2]
    elements = tf.data.Dataset.from_tensor_slices({"image": np.stack(photos2), "boxes": np.stack(boxes),
                                                   "classes": np.array([[3, 18]] * 2, np.int32)})
    images, targets = next(iter(elements.map(trainer.target_encoder).batch(2)))
    results["train step batch 2"] = median_seconds(lambda: trainer.train_on_batch(images, targets), repeats)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", default=None, help="a Python with torch + torchvision (and numpy, Pillow)")
    parser.add_argument("--data-dir", default=None, help="deepforest's data folder (default: found under ../.venv)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--side", choices=("torchvision",), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    data_dir = args.data_dir or next(iter(glob.glob(os.path.join(HERE, "..", ".venv", "lib", "python3*",
                                                                  "site-packages", "deepforest", "data"))), None)
    if args.side == "torchvision":
        print(json.dumps(torchvision_side(data_dir, args.repeats)))
        return
    if not args.torch_python:
        parser.error("--torch-python is required (a Python with torch and torchvision)")
    ours = rpn_tf_side(data_dir, args.repeats)
    out = subprocess.run([args.torch_python, __file__, "--side", "torchvision", "--data-dir", data_dir, "--repeats",
                          str(args.repeats)], capture_output=True, text=True, check=True)
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'measurement':<24} {'rpn-tf':>10} {'torchvision':>12} {'torchvision / rpn-tf':>22}  (median s, {os.cpu_count()} cores)")
    for name in ("predict batch 1", "predict batch 4", "train step batch 2"):
        print(f"{name:<24} {ours[name]:>10.3f} {theirs[name]:>12.3f} {theirs[name] / ours[name]:>6.2f}x")
    for name in ("served call batch 1", "served call batch 4"):
        print(f"{name:<24} {ours[name]:>10.3f} {'':>12} {theirs[name.replace('served call', 'predict')] / ours[name]:>6.2f}x"
              " (vs torchvision eager)")


if __name__ == "__main__":
    main()
