"""Writes ``tests/golden/torchvision_parity.npz``: what torchvision's ``fasterrcnn_resnet50_fpn`` computes on the
parity photos with the seeded weights of ``tests/torchvision_parity.py`` — samples of the FPN maps, the RPN's
proposals and scores, the detections, and the four training losses on given sampled anchors / ROIs.

Needs torch + torchvision (CPU is enough), numpy and Pillow — never rpn-tf's own dependencies; run it in a separate
environment, e.g.::

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch torchvision numpy pillow
    /tmp/tv/bin/python benchmarks/make_torchvision_golden.py --data-dir .venv/lib/python3.11/site-packages/deepforest/data

``--data-dir``: deepforest 2.1.0's data folder (``pip install --no-deps deepforest==2.1.0``; its YELL photos are
the parity photos). ``tests/interop/test_torchvision_parity.py`` reads the file (and, where torch is installed,
regenerates it live with ``--out`` elsewhere and compares).

Training losses: torchvision's samplers draw with ``torch.randperm``; here it is replaced by ``arange`` (the first
positives and negatives in index order), and batch norm stays in inference mode (rpn-tf fine-tunes with frozen
batch norm, as torchvision does with pretrained weights), so the sample — written to the file — is what rpn-tf's
losses are computed on.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from torchvision_parity import GOLDEN, PHOTOS, SEED, load_photos, seeded_state_dict  # noqa: E402

FPN_POSITIONS = 96  # sampled (y, x) positions per level, borders included
FPN_CHANNELS = 32
# GT boxes of the training-loss check, as fractions (y1, x1, y2, x2) of each photo, with COCO labels
TRAIN_BOXES = ((0.10, 0.15, 0.45, 0.40, 3), (0.50, 0.55, 0.90, 0.95, 18), (0.20, 0.60, 0.35, 0.80, 1))


def fpn_samples(rng, feature):
    """``(positions [P, 2], channels [C], values [P, C], max_abs)`` of one level ``[256, H, W]``: corners and edges
    (where padding mistakes show) plus random positions."""
    _, height, width = feature.shape
    border = [(0, 0), (0, width - 1), (height - 1, 0), (height - 1, width - 1), (height - 1, width // 2),
              (height // 2, width - 1), (0, width // 2), (height // 2, 0)]
    rest = np.stack([rng.integers(0, height, FPN_POSITIONS - len(border)),
                     rng.integers(0, width, FPN_POSITIONS - len(border))], 1)
    positions = np.concatenate([np.array(border), rest]).astype(np.int32)
    channels = np.sort(rng.choice(feature.shape[0], FPN_CHANNELS, replace=False)).astype(np.int32)
    values = feature[:, positions[:, 0], positions[:, 1]][channels].T
    return positions, channels, values.astype(np.float32), np.float32(np.abs(feature).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="deepforest's data folder (default: found under ../.venv)")
    parser.add_argument("--out", default=GOLDEN, help=f"the golden file (default {GOLDEN})")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or next(iter(glob.glob(os.path.join(HERE, "..", ".venv", "lib", "python3*",
                                                                  "site-packages", "deepforest", "data"))), None)
    if not data_dir:
        parser.error("--data-dir is required (deepforest's data folder)")

    import torch
    import torchvision
    from torchvision.models.detection import fasterrcnn_resnet50_fpn
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    model.load_state_dict({name: torch.from_numpy(value) for name, value in seeded_state_dict(SEED).items()},
                          strict=True)
    model.eval()
    photos = load_photos(data_dir)
    out = {"seed": np.int64(SEED), "torch_version": np.array(torch.__version__),
           "torchvision_version": np.array(torchvision.__version__)}
    rng = np.random.default_rng(0)
    for index, photo in enumerate(photos):
        key = f"p{index}_"
        image = torch.from_numpy(photo).permute(2, 0, 1).float() / 255.0
        with torch.no_grad():
            images, _ = model.transform([image])
            features = model.backbone(images.tensors)
            out[key + "canvas_size"] = np.array(images.tensors.shape[-2:], np.int32)
            out[key + "image_size"] = np.array(images.image_sizes[0], np.int32)
            for level, (name, feature) in enumerate(features.items()):
                positions, channels, values, max_abs = fpn_samples(rng, feature[0].numpy())
                out[f"{key}fpn{level}_positions"], out[f"{key}fpn{level}_channels"] = positions, channels
                out[f"{key}fpn{level}_values"], out[f"{key}fpn{level}_max"] = values, max_abs
            # the RPN's proposals with their scores (RegionProposalNetwork.forward, eval)
            rpn, maps = model.rpn, list(features.values())
            objectness, deltas = rpn.head(maps)
            anchors = rpn.anchor_generator(images, maps)
            per_level = [o[0].numel() for o in objectness]
            objectness, deltas = concat_box_prediction_layers(objectness, deltas)
            proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(1, -1, 4)
            boxes, scores = rpn.filter_proposals(proposals, objectness, images.image_sizes, per_level)
            out[key + "proposals"], out[key + "proposal_scores"] = boxes[0].numpy(), scores[0].numpy()
            detections, _ = model.roi_heads(features, boxes, images.image_sizes)
            for name in ("boxes", "scores", "labels"):
                out[f"{key}canvas_detection_{name}"] = detections[0][name].numpy()
            final = model([image])[0]
            for name in ("boxes", "scores", "labels"):
                out[f"{key}detection_{name}"] = final[name].numpy()
        out.update(training_losses(model, image, photo.shape[:2], key))
        print(f"photo {index} {photo.shape[:2]} → canvas {tuple(out[key + 'canvas_size'])}: "
              f"{len(out[key + 'proposals'])} proposals, {len(out[key + 'detection_scores'])} detections "
              f"({int((out[key + 'detection_scores'] >= 0.2).sum())} ≥ 0.2)", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB)")


def training_losses(model, image, size, key):
    """The four losses of a training step on ``TRAIN_BOXES`` with deterministic sampling, and the sample."""
    import torch

    height, width = size
    targets = [{"boxes": torch.tensor([[x1 * width, y1 * height, x2 * width, y2 * height]
                                       for y1, x1, y2, x2, _ in TRAIN_BOXES], dtype=torch.float32),
                "labels": torch.tensor([label for *_, label in TRAIN_BOXES], dtype=torch.int64)}]
    captured = {}
    rpn, heads = model.rpn, model.roi_heads
    compute_loss, select = rpn.compute_loss, heads.select_training_samples

    def capturing_loss(objectness, deltas, labels, regression_targets):
        positive, negative = rpn.fg_bg_sampler(labels)
        sampled = torch.where(torch.cat(positive) | torch.cat(negative))[0]
        captured["rpn_index"] = sampled.numpy().astype(np.int32)
        captured["rpn_labels"] = torch.cat(labels)[sampled].numpy().astype(np.int32)
        captured["rpn_targets"] = torch.cat(regression_targets)[sampled].numpy()
        return compute_loss(objectness, deltas, labels, regression_targets)

    def capturing_select(proposals, targets):
        result = select(proposals, targets)
        captured["roi_boxes"] = result[0][0].numpy()
        captured["roi_labels"] = result[2][0].numpy().astype(np.int32)
        captured["roi_targets"] = result[3][0].numpy()
        return result

    original_randperm = torch.randperm
    torch.randperm = lambda n, *args, **kwargs: torch.arange(n, device=kwargs.get("device"))
    rpn.compute_loss, heads.select_training_samples = capturing_loss, capturing_select
    try:
        model.train()
        for module in model.modules():  # frozen batch norm, as rpn-tf fine-tunes
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        with torch.no_grad():
            losses = model([image], targets)
    finally:
        torch.randperm = original_randperm
        rpn.compute_loss, heads.select_training_samples = compute_loss, select
        model.eval()
    out = {key + "train_boxes": np.array([[y1 * height, x1 * width, y2 * height, x2 * width]
                                          for y1, x1, y2, x2, _ in TRAIN_BOXES], np.float32),
           key + "train_labels": np.array([label for *_, label in TRAIN_BOXES], np.int32),
           key + "losses": np.array([float(losses[name]) for name in ("loss_objectness", "loss_rpn_box_reg",
                                                                    "loss_classifier", "loss_box_reg")], np.float32)}
    out.update({key + name: value for name, value in captured.items()})
    return out


if __name__ == "__main__":
    main()
