"""The built-in backbones by name: one table that ``modeling/backbones.py`` builds from and the command line's
presets read (this module imports nothing, so ``rpn-tf --help`` stays free of TensorFlow)."""

# name: (stride, preprocessing mode, output layer)
BUILTIN_BACKBONES = {
    "vgg16": (16, "caffe", "block5_conv3"),
    "resnet50": (16, "caffe", "conv4_block6_out"),
    "mobilenet_v2": (16, "tf", "block_13_expand_relu"),
    "simple": (16, "unit", None),
}
# name: (trunk, preprocessing mode, bottom-up layers C2–C5, pyramid channels)
FPN_BACKBONES = {
    "resnet50_fpn": ("resnet50", "caffe",
                     ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"), 256),
    "mobilenet_v2_fpn": ("mobilenet_v2", "tf", ("block_2_add", "block_5_add", "block_12_add", "out_relu"), 256),
    "simple_fpn": ("simple", "unit", ("block2_pool", "block3_pool", "block4_pool", "block5_pool"), 64),
}
FPN_STRIDES = (4, 8, 16, 32, 64)  # P2–P6 of every built-in pyramid
BACKBONE_STRIDES = {name: stride for name, (stride, _, _) in BUILTIN_BACKBONES.items()}
BACKBONES = tuple(BUILTIN_BACKBONES) + tuple(FPN_BACKBONES)
