"""Programs built on the library: the ``rpn-tf`` command line (``cli``), the ``demo``, the deepforest training
recipe (``train_deepforest``), named settings (``presets``) and pictures (``visualize``)."""
