"""Keras pieces: ``backbones``, the ``head`` layer, ``losses``, ``metrics`` and the ``rpn_model`` that wires them."""
