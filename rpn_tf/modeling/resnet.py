"""torchvision's ResNet-50 (v1.5) as a Keras functional model: the trunk of torchvision's Faster R-CNN.

``keras.applications.ResNet50`` is v1 (the stride-2 convolution of a stage is its first 1×1; convolutions with
biases), and Keras's ``"same"`` padding pads a stride-2 convolution asymmetrically (0 before, 1 after); torchvision's
ResNet puts the stride on the 3×3 convolution (v1.5), has no convolution biases, and pads symmetrically. This model
reproduces torchvision's exactly: explicit ``ZeroPadding2D`` + ``"valid"`` convolutions, the stride on ``conv2`` of
a stage's first block, and batch norm with a chosen ``epsilon`` (torchvision's 1e-5; 0 for the COCO checkpoint
of ``fasterrcnn_resnet50_fpn``, which overwrites it).

Layer names follow torchvision's state-dict names with ``_`` for ``.``: ``conv1``, ``bn1``, ``layer2_0_conv2``,
``layer2_0_downsample_0`` (the projection's conv), ``layer2_0_downsample_1`` (its batch norm), …

Shape shorthand: B images, H × W the (any) input size; C2–C5 at strides 4, 8, 16, 32 with 256, 512, 1024, 2048
channels.
"""

from __future__ import annotations

import keras

RESNET50_BLOCKS = (3, 4, 6, 3)  # layer1..layer4
STAGE_WIDTHS = (64, 128, 256, 512)  # the bottleneck width; outputs are 4× wider
EXPANSION = 4


def _conv_bn(x, filters, kernel, stride, name, bn_name, epsilon, relu=True):
    """torchvision's ``conv (no bias, symmetric padding) → batch norm [→ ReLU]``."""
    padding = (kernel - 1) // 2
    if padding:
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(epsilon=epsilon, momentum=0.9, name=bn_name)(x)
    return keras.layers.ReLU(name=f"{bn_name}_relu")(x) if relu else x


def _bottleneck(x, width, stride, prefix, epsilon, downsample):
    """torchvision's ``Bottleneck``: 1×1 → 3×3 (stride here: v1.5) → 1×1 (×4), plus the identity or a 1×1
    projection, then ReLU."""
    shortcut = x
    y = _conv_bn(x, width, 1, 1, f"{prefix}_conv1", f"{prefix}_bn1", epsilon)
    y = _conv_bn(y, width, 3, stride, f"{prefix}_conv2", f"{prefix}_bn2", epsilon)
    y = _conv_bn(y, width * EXPANSION, 1, 1, f"{prefix}_conv3", f"{prefix}_bn3", epsilon, relu=False)
    if downsample:
        shortcut = _conv_bn(x, width * EXPANSION, 1, stride, f"{prefix}_downsample_0", f"{prefix}_downsample_1",
                            epsilon, relu=False)
    y = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{prefix}_out")(y)


def torchvision_resnet50(inputs, epsilon=1e-5):
    """C2–C5 (``layer1``…``layer4`` outputs) of torchvision's ResNet-50 on ``inputs`` (a ``keras.Input``,
    normalized images; any size): a list of 4 tensors, finest first."""
    x = _conv_bn(inputs, 64, 7, 2, "conv1", "bn1", epsilon)
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)  # zeros = -inf here: the input is ≥ 0 after ReLU
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    outputs = []
    for stage, (blocks, width) in enumerate(zip(RESNET50_BLOCKS, STAGE_WIDTHS)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _bottleneck(x, width, stride, f"layer{stage + 1}_{block}", epsilon, downsample=block == 0)
        outputs.append(x)
    return outputs


# torchvision's trainable_backbone_layers: the stages trained, from the top ("layer4") down; the rest is frozen
TRAINABLE_STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")


def freeze_stages(model, trainable_layers):
    """torchvision's ``trainable_backbone_layers``: only the top ``trainable_layers`` (0–5) of ``layer4``,
    ``layer3``, ``layer2``, ``layer1``, ``conv1`` train (``bn1`` with ``conv1``); every other ResNet layer of
    ``model`` is frozen. The pyramid's layers always train. Returns the number of layers frozen."""
    if not 0 <= int(trainable_layers) <= 5:
        raise ValueError(f"trainable_backbone_layers must be in 0..5, got {trainable_layers}")
    trained = TRAINABLE_STAGES[:int(trainable_layers)]
    if "conv1" in trained:
        trained = trained + ("bn1", "maxpool")
    frozen = 0
    for layer in model.layers:
        stage = layer.name.split("_")[0]
        if stage in ("conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4") and stage not in trained:
            if layer.trainable_weights:
                frozen += 1
            layer.trainable = False
    return frozen
