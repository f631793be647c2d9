"""Parity with torchvision's ``fasterrcnn_resnet50_fpn``: seeded weights in torchvision's state-dict layout (NumPy
only: nothing large is committed, and the same seed gives the same weights on both sides), the photos, and the
golden file's name. ``benchmarks/make_torchvision_golden.py`` (with torch + torchvision) writes what torchvision
computes for those weights and photos; ``tests/interop/test_torchvision_parity.py`` compares rpn-tf's against it.
"""

from __future__ import annotations

import os

import numpy as np

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "torchvision_parity.npz")
SEED = 2026
NUM_CLASSES = 91  # torchvision's COCO head: background + ids 1..90
# Crops of deepforest's two YELL photos (PNG: decoded identically by PIL and TensorFlow), sizes chosen for
# torchvision's transform: 334×500 → 799×1197 (its float64 floor gives 799, not 800), 427×640 → 800×1199 (padded to
# 800×1216), 500×330 (portrait) → 1212×800, 250×600 → 555×1333 (the longer side's cap; padded to 576×1344).
PHOTOS = (("2019_YELL_2_541000_4977000_image_crop", 100, 60, 334, 500),
          ("2019_YELL_2_528000_4978000_image_crop2", 900, 1200, 427, 640),
          ("2019_YELL_2_528000_4978000_image_crop2", 1500, 300, 500, 330),
          ("2019_YELL_2_541000_4977000_image_crop", 700, 400, 250, 600))
# the classes the seeded predictor favours (so that each photo gets many detections scoring ≥ 0.2)
FAVOURED_CLASSES = (1, 3, 18, 44, 62)
BLOCKS = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)


def state_dict_layout(num_classes=NUM_CLASSES):
    """``[(name, shape)]`` of ``fasterrcnn_resnet50_fpn(weights=None, num_classes=...)``'s state dict, in its order
    (``nn.BatchNorm2d`` layers: with ``num_batches_tracked``)."""
    layout = []

    def conv(name, out, inputs, size):
        layout.append((f"{name}.weight", (out, inputs, size, size)))

    def batch_norm(name, channels):
        layout.extend([(f"{name}.weight", (channels,)), (f"{name}.bias", (channels,)),
                       (f"{name}.running_mean", (channels,)), (f"{name}.running_var", (channels,)),
                       (f"{name}.num_batches_tracked", ())])

    conv("backbone.body.conv1", 64, 3, 7)
    batch_norm("backbone.body.bn1", 64)
    inputs = 64
    for stage, (blocks, width) in enumerate(zip(BLOCKS, WIDTHS)):
        for block in range(blocks):
            prefix = f"backbone.body.layer{stage + 1}.{block}"
            conv(f"{prefix}.conv1", width, inputs, 1)
            batch_norm(f"{prefix}.bn1", width)
            conv(f"{prefix}.conv2", width, width, 3)
            batch_norm(f"{prefix}.bn2", width)
            conv(f"{prefix}.conv3", 4 * width, width, 1)
            batch_norm(f"{prefix}.bn3", 4 * width)
            if block == 0:
                conv(f"{prefix}.downsample.0", 4 * width, inputs, 1)
                batch_norm(f"{prefix}.downsample.1", 4 * width)
            inputs = 4 * width
    for kind, size in (("inner_blocks", 1), ("layer_blocks", 3)):
        for level, channels in enumerate((256, 512, 1024, 2048)):
            conv(f"backbone.fpn.{kind}.{level}.0", 256, channels if kind == "inner_blocks" else 256, size)
            layout.append((f"backbone.fpn.{kind}.{level}.0.bias", (256,)))
    layout += [("rpn.head.conv.0.0.weight", (256, 256, 3, 3)), ("rpn.head.conv.0.0.bias", (256,)),
               ("rpn.head.cls_logits.weight", (3, 256, 1, 1)), ("rpn.head.cls_logits.bias", (3,)),
               ("rpn.head.bbox_pred.weight", (12, 256, 1, 1)), ("rpn.head.bbox_pred.bias", (12,)),
               ("roi_heads.box_head.fc6.weight", (1024, 256 * 7 * 7)), ("roi_heads.box_head.fc6.bias", (1024,)),
               ("roi_heads.box_head.fc7.weight", (1024, 1024)), ("roi_heads.box_head.fc7.bias", (1024,)),
               ("roi_heads.box_predictor.cls_score.weight", (num_classes, 1024)),
               ("roi_heads.box_predictor.cls_score.bias", (num_classes,)),
               ("roi_heads.box_predictor.bbox_pred.weight", (4 * num_classes, 1024)),
               ("roi_heads.box_predictor.bbox_pred.bias", (4 * num_classes,))]
    return layout


def seeded_state_dict(seed=SEED, num_classes=NUM_CLASSES):
    """Weights drawn from ``numpy.random.default_rng(seed)`` in torchvision's layout: He-scaled convolutions and
    linear layers; batch norm with random statistics and affine parameters (zero mean / unit variance would hide a
    missing or misplaced batch norm); residual branches damped so activations stay O(1) through 16 blocks; an RPN
    whose objectness spreads over several logits; a predictor whose biases favour ``FAVOURED_CLASSES``, so that
    each photo gets many detections (random weights alone score every class ≈ 1/91 and detect nothing)."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in state_dict_layout(num_classes):
        if name.endswith("num_batches_tracked"):
            weights[name] = np.array(int(rng.integers(1, 1000)), np.int64)
            continue
        if name.endswith("running_mean"):
            value = rng.normal(0.0, 0.2, shape)
        elif name.endswith("running_var"):
            value = rng.uniform(0.3, 2.0, shape)
        elif ".bn" in name or ".downsample.1." in name:  # batch norm affine parameters
            damp = 0.35 if (".bn3." in name or ".downsample.1." in name) else 1.0
            value = (rng.uniform(0.6, 1.4, shape) * damp if name.endswith(".weight")
                     else rng.normal(0.0, 0.1, shape))
        elif name.endswith(".bias"):
            value = rng.normal(0.0, 0.05, shape)
        else:  # convolution / linear weights: He-scaled
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        weights[name] = value.astype(np.float32)
    weights["rpn.head.cls_logits.bias"] = rng.normal(0.0, 1.0, (3,)).astype(np.float32)
    weights["rpn.head.bbox_pred.weight"] *= 0.3
    weights["roi_heads.box_predictor.cls_score.weight"] *= 0.2
    bias = rng.normal(-2.0, 0.5, (num_classes,))
    bias[0] = 0.0
    favoured = [k for k in FAVOURED_CLASSES if k < num_classes]
    bias[favoured] = rng.uniform(1.9, 2.5, len(favoured))
    weights["roi_heads.box_predictor.cls_score.bias"] = bias.astype(np.float32)
    weights["roi_heads.box_predictor.bbox_pred.weight"] *= 0.2
    return weights


def load_photos(data_dir):
    """The ``PHOTOS`` crops as uint8 ``[H, W, 3]`` arrays, read with Pillow from deepforest's data folder."""
    from PIL import Image

    photos = []
    for name, y, x, height, width in PHOTOS:
        with Image.open(os.path.join(data_dir, f"{name}.png")) as image:
            array = np.asarray(image.convert("RGB"))
        photo = array[y:y + height, x:x + width]
        if photo.shape[:2] != (height, width):
            raise ValueError(f"{name} is too small for the crop {PHOTOS}")
        photos.append(np.ascontiguousarray(photo))
    return photos
