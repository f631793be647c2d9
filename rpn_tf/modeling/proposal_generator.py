"""``ProposalGenerator``: the RPN's proposal stage as a standalone, serializable part — anchors, the box coder and
``ProposalConfig`` bound together, so that a model (``RPNModel``, ``FasterRCNN``) or a serving module turns head
outputs into proposals with one call."""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from rpn_tf.config import AnchorConfig, ProposalConfig, anchor_config_to_dict, as_anchor_config, \
    config_from_kwargs, config_to_dict, validate_image_size
from rpn_tf.ops.anchors import anchors_per_level, generate_anchors, level_anchors_in_graph
from rpn_tf.ops.box_coder import BoxCoder
from rpn_tf.ops.nms import resolve_nms
from rpn_tf.ops.proposals import generate_proposals


@keras.saving.register_keras_serializable(package="rpn_tf")
class ProposalGenerator:
    """Head outputs → padded proposals (``generate_proposals``): decode with ``box_coder`` on the anchors of
    ``anchor_config`` at ``image_size``, clip, drop small boxes, top-k per level, NMS, top-k.

    ``__call__(objectness_logits [B, A], box_deltas [B, A, 4], training=False, valid_sizes=None, config=None,
    xla=False)`` → ``{"boxes" [B, N, 4], "scores" [B, N], "num_proposals" [B]}`` in canvas pixels. ``config``
    overrides the generator's ``ProposalConfig`` for one call (e.g. more proposals for an evaluation); ``xla``
    resolves ``nms="auto"`` (the XLA-compilable padded NMS inside XLA-compiled steps, else combined NMS).

    Args:
      image_size: ``(height, width)`` of the canvas.
      anchor_config: ``AnchorConfig`` / ``MultiLevelAnchorConfig`` (the target encoder's: the outputs' order).
      config: ``ProposalConfig`` (or a dict of its fields; default the article's).
      box_coder: the targets' ``BoxCoder`` (default weights 1).
    """

    def __init__(self, image_size, anchor_config=None, config=None, box_coder=None):
        self.image_size = validate_image_size(image_size)
        self.anchor_config = as_anchor_config(anchor_config if anchor_config is not None else AnchorConfig())
        self.config = config_from_kwargs(ProposalConfig, config)
        if isinstance(box_coder, dict):
            box_coder = BoxCoder(**box_coder)
        self.box_coder = box_coder or BoxCoder()
        self.anchors = generate_anchors(self.image_size, self.anchor_config)
        self.level_sizes = anchors_per_level(self.image_size, self.anchor_config)

    def resolved(self, config=None, xla=False):
        """``config`` (default the generator's) with ``nms="auto"`` resolved (``resolve_nms``): ``xla`` for an
        XLA-compiled function or a training step."""
        config = config or self.config
        return dataclasses.replace(config, nms=resolve_nms(config.nms, xla))

    def __call__(self, objectness_logits, box_deltas, training=False, valid_sizes=None, config=None, xla=False,
                 canvas_size=None, map_sizes=None):
        """See the class docstring; ``canvas_size`` (int ``[2]``) and ``map_sizes`` (one int ``[2]`` per level),
        known at run time, place the anchors on a canvas other than ``image_size`` (a backbone of any input size:
        the ``"torchvision"`` resize policy), computed in the graph by the same rules."""
        anchors, level_sizes, clip_size = self.anchors, self.level_sizes, self.image_size
        if map_sizes is not None:
            levels = self.anchor_config.levels
            per_level = [level_anchors_in_graph(canvas_size, size, level) for size, level in zip(map_sizes, levels)]
            anchors = tf.concat(per_level, axis=0)
            level_sizes = [tf.shape(level_anchors)[0] for level_anchors in per_level]
            clip_size = tf.cast(canvas_size, tf.float32)
        return generate_proposals(anchors, objectness_logits, box_deltas, clip_size, self.resolved(config, xla),
                                  training=training, box_coder=self.box_coder, valid_sizes=valid_sizes,
                                  level_sizes=level_sizes)

    def get_config(self):
        return {"image_size": list(self.image_size), "anchor_config": anchor_config_to_dict(self.anchor_config),
                "config": config_to_dict(self.config), "box_coder": config_to_dict(self.box_coder)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
