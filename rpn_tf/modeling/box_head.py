"""``BoxHead``: the second stage's head (Fast R-CNN's "two sibling layers" on ROI features).

Shape shorthand: B images, R ROIs per image, S ROI Align output size, C channels, K object classes (background
excluded; class ids 1…K, 0 is background).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="rpn_tf")
class BoxHead(keras.layers.Layer):
    """ROI features → class logits and class-specific box deltas (the article's "two sibling layers").

    ``num_conv`` 3×3 conv + ReLU layers (``conv_channels``; 0 by default), then ``num_fc`` fully connected + ReLU
    layers of ``representation_size`` (2 × 1024: detectron2's / torchvision's ``TwoMLPHead``; ``num_conv=4,
    num_fc=1`` is detectron2's ``4conv1fc``), then a linear classifier over ``K + 1`` classes (background first) and
    a linear regressor of ``4 K`` deltas. Initialisation as detectron2: normal(0.01) classifier, normal(0.001)
    regressor, zero biases.

    ``call(roi_features [B, R, S, S, C])`` → ``(class_logits [B, R, K + 1], box_deltas [B, R, K, 4])``, float32.
    """

    def __init__(self, num_classes, representation_size=1024, num_fc=2, num_conv=0, conv_channels=256, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (object classes, background excluded), got {num_classes}")
        self.representation_size, self.num_fc = int(representation_size), int(num_fc)
        self.num_conv, self.conv_channels = int(num_conv), int(conv_channels)
        if self.num_fc < 0 or self.num_conv < 0 or self.num_fc + self.num_conv == 0:
            raise ValueError(f"BoxHead needs num_fc + num_conv >= 1 (both >= 0), got {num_fc}, {num_conv}")
        self.convs = [keras.layers.Conv2D(self.conv_channels, 3, padding="same", activation="relu",
                                          name=f"conv{index + 1}") for index in range(self.num_conv)]
        self.fcs = [keras.layers.Dense(self.representation_size, activation="relu", name=f"fc{index + 1}")
                    for index in range(self.num_fc)]
        self.classifier = keras.layers.Dense(
            self.num_classes + 1, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            name="class_logits")
        self.regressor = keras.layers.Dense(
            4 * self.num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
            name="box_deltas")

    def build(self, input_shape):
        size, channels = int(input_shape[-2]), int(input_shape[-1])
        shape = (None, size, size, channels)
        for conv in self.convs:
            conv.build(shape)
            shape = (None, size, size, self.conv_channels)
        width = size * size * shape[-1]
        for fc in self.fcs:
            fc.build((None, width))
            width = self.representation_size
        self.classifier.build((None, width))
        self.regressor.build((None, width))
        self.built = True

    def call(self, roi_features):
        shape = keras.ops.shape(roi_features)
        batch, rois = shape[0], shape[1]
        x = keras.ops.reshape(roi_features, (-1, *roi_features.shape[2:]))
        for conv in self.convs:
            x = conv(x)
        x = keras.ops.reshape(x, (keras.ops.shape(x)[0], -1))
        for fc in self.fcs:
            x = fc(x)
        logits = keras.ops.reshape(self.classifier(x), (batch, rois, self.num_classes + 1))
        deltas = keras.ops.reshape(self.regressor(x), (batch, rois, self.num_classes, 4))
        return keras.ops.cast(logits, "float32"), keras.ops.cast(deltas, "float32")

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "representation_size": self.representation_size, "num_fc": self.num_fc, "num_conv": self.num_conv,
                "conv_channels": self.conv_channels}
