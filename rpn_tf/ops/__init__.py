"""Pure TensorFlow operations, no Keras, in pipeline order: ``anchors`` → ``box_ops`` / ``box_coder`` →
``matching`` → ``sampling`` → ``targets`` → ``nms`` / ``proposals`` → ``roi_sampling``."""
