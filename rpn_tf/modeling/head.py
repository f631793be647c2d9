"""``RpnHead``: the article's RPN head as a Keras layer.

Shape shorthand: B images, Hf × Wf feature map, C channels, K anchors per location, A = Hf·Wf·K.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="rpn_tf")
class RpnHead(keras.layers.Layer):
    """3×3 conv (``channels``, ReLU) → sibling 1×1 convs for objectness (K) and deltas (4K), flattened to the
    anchor order (row, column, then the K anchors of a location, ratio-major / scale-minor).

    Weights are drawn from N(0, 0.01) and biases start at 0, as in the paper.

    ``call(features [B, Hf, Wf, C])`` → ``(objectness_logits [B, Hf·Wf·K], box_deltas [B, Hf·Wf·K, 4])``.

    Args:
      num_anchors_per_location: K.
      channels: channels of the 3×3 conv (512 in the article).
    """

    def __init__(self, num_anchors_per_location, channels=512, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors_per_location = int(num_anchors_per_location)
        self.channels = int(channels)
        initializer = keras.initializers.RandomNormal(stddev=0.01)
        self.conv = keras.layers.Conv2D(self.channels, 3, padding="same", activation="relu",
                                        kernel_initializer=initializer, name="rpn_conv")
        self.objectness = keras.layers.Conv2D(self.num_anchors_per_location, 1, kernel_initializer=initializer,
                                              name="rpn_objectness")
        self.deltas = keras.layers.Conv2D(4 * self.num_anchors_per_location, 1, kernel_initializer=initializer,
                                          name="rpn_deltas")

    def build(self, input_shape):
        self.conv.build(input_shape)
        head_shape = (*input_shape[:-1], self.channels)
        self.objectness.build(head_shape)
        self.deltas.build(head_shape)
        self.built = True

    def call(self, features):
        hidden = self.conv(features)
        logits = self.objectness(hidden)  # (B, Hf, Wf, K)
        deltas = self.deltas(hidden)  # (B, Hf, Wf, 4K), anchor-major then (dy, dx, dh, dw)
        # (B, Hf, Wf, K) -> (B, Hf*Wf*K): row, column, then anchor, as the anchors are ordered
        count = keras.ops.shape(logits)[1] * keras.ops.shape(logits)[2] * self.num_anchors_per_location
        return (keras.ops.reshape(logits, (-1, count)), keras.ops.reshape(deltas, (-1, count, 4)))

    def get_config(self):
        return {**super().get_config(), "num_anchors_per_location": self.num_anchors_per_location,
                "channels": self.channels}
