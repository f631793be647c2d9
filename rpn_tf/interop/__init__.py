"""Interoperability with other libraries' checkpoints: ``checkpoints`` reads PyTorch ``.pth`` / ``.safetensors``
files into NumPy arrays without torch; ``torchvision`` maps torchvision's Faster R-CNN state dicts onto rpn-tf's
models (``FasterRCNN.from_torchvision``, ``RPNModel.from_torchvision``)."""
