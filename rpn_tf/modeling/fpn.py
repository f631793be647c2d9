"""Feature pyramid (FPN, Lin et al. 2017) on a backbone's C2–C5 maps: P2–P5 by top-down merging, P6 by subsampling.

The nearest ×2 upsampling cropped to the lateral's size equals torchvision's ``F.interpolate(size=lateral's,
mode="nearest")`` (``floor(i · in / out)`` = ``i // 2`` when ``in = ceil(out / 2)``), for static and run-time sizes.

Shape shorthand: B images, Ci the backbone map at stride 2^i, Pi the pyramid level at stride 2^i, C channels.
As detectron2's ``FPN`` with ``LastLevelMaxPool``: lateral 1×1 convs to C channels, nearest-neighbour ×2
upsampling added top-down, a 3×3 conv on every merged map, P6 = P5 subsampled (1×1 max pool, stride 2).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="rpn_tf")
class TopDownMerge(keras.layers.Layer):
    """``lateral + upsample×2(coarse)``, the upsampled map cropped to the lateral's size (odd sizes: the coarse
    map has ``ceil(size / 2)`` rows, so its ×2 can be one row / column longer)."""

    def call(self, inputs):
        coarse, lateral = inputs
        upsampled = keras.ops.repeat(keras.ops.repeat(coarse, 2, axis=1), 2, axis=2)
        height, width = lateral.shape[1], lateral.shape[2]
        if height is None or width is None:  # a backbone of any input size (torchvision's): the size at run time
            shape = keras.ops.shape(lateral)
            height, width = shape[1], shape[2]
        return lateral + upsampled[:, :height, :width, :]


def feature_pyramid(inputs, bottom_up, channels=256, name="fpn"):
    """A ``keras.Model`` from ``inputs`` to ``[P2, …, P5, P6]`` given the bottom-up maps ``[C2, …, C5]`` (finest
    first; any number of levels ≥ 1)."""
    laterals = [keras.layers.Conv2D(channels, 1, name=f"{name}_lateral{index}")(feature)
                for index, feature in enumerate(bottom_up)]
    merged = [laterals[-1]]
    for index in range(len(laterals) - 2, -1, -1):
        merged.insert(0, TopDownMerge(name=f"{name}_merge{index}")([merged[0], laterals[index]]))
    outputs = [keras.layers.Conv2D(channels, 3, padding="same", name=f"{name}_output{index}")(feature)
               for index, feature in enumerate(merged)]
    outputs.append(keras.layers.MaxPooling2D(1, strides=2, padding="same", name=f"{name}_subsample")(outputs[-1]))
    return keras.Model(inputs, outputs, name=name)
