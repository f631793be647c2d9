"""The RPN's parts, each a standalone object that serializes on its own (``keras.saving.serialize_keras_object``),
built from ``RPNModel``'s arguments and checked against each other once, here.

=====================  ==============================  ===========================================================
part                   class                           job
=====================  ==============================  ===========================================================
``preprocessing``      ``ImagePreprocessing`` (layer)  0–255 pixels → the backbone's input range
``backbone``           ``keras.Model``                 feature map(s), finest first
``target_encoder``     ``RpnTargetEncoder``            anchors, labels, sampling, delta targets (``dataset.map``)
``head``               ``RpnHead`` (layer)             objectness logits and deltas, shared by every level
``loss``               ``RpnLoss``                     the losses, normalized over the global batch
``proposal_generator`` ``ProposalGenerator``           decode, clip, min size, top-k, NMS
=====================  ==============================  ===========================================================

``RPNModel`` is their assembly (``RPNModel.from_parts`` takes parts of your own); ``FasterRCNN`` reuses an RPN's.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import keras

from rpn_tf.config import AnchorConfig, MultiLevelAnchorConfig, ProposalConfig, TargetConfig, as_anchor_config, \
    config_from_kwargs, validate_image_size
from rpn_tf.data.encoder import RpnTargetEncoder
from rpn_tf.modeling.backbones import ImagePreprocessing, build_backbone, feature_list, feature_shapes
from rpn_tf.modeling.head import RpnHead
from rpn_tf.modeling.losses import RpnLoss
from rpn_tf.modeling.proposal_generator import ProposalGenerator

# The encoder lives in rpn_tf.data, which does not import Keras (tf.data service workers): registered here.
keras.saving.register_keras_serializable(package="rpn_tf")(RpnTargetEncoder)

PART_NAMES = ("preprocessing", "backbone", "target_encoder", "head", "loss", "proposal_generator")


@dataclasses.dataclass(frozen=True)
class RpnParts:
    """The parts of one RPN (``PART_NAMES``) and the backbone's feature strides (finest first)."""

    preprocessing: ImagePreprocessing
    backbone: keras.Model
    target_encoder: RpnTargetEncoder
    head: RpnHead
    loss: RpnLoss
    proposal_generator: ProposalGenerator
    backbone_strides: Tuple[int, ...]

    @property
    def image_size(self):
        return self.target_encoder.image_size

    def serialized(self) -> dict:
        """``{part name: keras.saving.serialize_keras_object(part)}`` (``deserialize_parts`` reads it)."""
        return {name: keras.saving.serialize_keras_object(getattr(self, name)) for name in PART_NAMES}


def deserialize_parts(serialized: dict) -> dict:
    """The parts of ``RpnParts.serialized()`` as keyword arguments of ``RPNModel.from_parts``."""
    return {name: keras.saving.deserialize_keras_object(serialized[name]) for name in PART_NAMES}


def default_head(anchor_config, backbone, channels=None):
    """The article's head (512 channels) on one map, the pyramid's channel count on several (detectron2's)."""
    outputs = feature_list(backbone.output)
    if channels is None:
        channels = 512 if len(outputs) == 1 else int(outputs[0].shape[-1])
    return RpnHead(as_anchor_config(anchor_config).levels[0].num_anchors_per_location, channels, name="rpn_head")


def default_proposal_generator(target_encoder):
    """The article's proposal settings for one map, ``ProposalConfig.fpn()`` (per-level counts) for a pyramid."""
    levels = target_encoder.anchor_config.levels
    return ProposalGenerator(target_encoder.image_size, target_encoder.anchor_config,
                             ProposalConfig.fpn() if len(levels) > 1 else ProposalConfig(), target_encoder.box_coder)


def assemble_parts(backbone, target_encoder, head=None, loss=None, proposal_generator=None,
                   preprocessing=None) -> RpnParts:
    """``RpnParts`` from parts of your own, the missing ones by default (``RPNModel.from_parts``); the backbone's
    strides are the anchor levels' (``check_parts`` checks its map sizes against them)."""
    if not isinstance(backbone, keras.Model):
        raise TypeError(f"backbone must be a keras.Model, got {type(backbone).__name__}")
    if not isinstance(target_encoder, RpnTargetEncoder):
        raise TypeError(f"target_encoder must be an RpnTargetEncoder, got {type(target_encoder).__name__}")
    for name, part, kind in (("head", head, RpnHead), ("loss", loss, RpnLoss),
                             ("proposal_generator", proposal_generator, ProposalGenerator),
                             ("preprocessing", preprocessing, ImagePreprocessing)):
        if part is not None and not isinstance(part, kind):
            raise TypeError(f"{name} must be a {kind.__name__}, got {type(part).__name__}")
    strides = tuple(level.stride for level in target_encoder.anchor_config.levels)
    return RpnParts(preprocessing or ImagePreprocessing("none", name="preprocessing"), backbone, target_encoder,
                    head or default_head(target_encoder.anchor_config, backbone), loss or RpnLoss(),
                    proposal_generator or default_proposal_generator(target_encoder), strides)


def build_rpn_parts(image_size, anchor_config=None, backbone="vgg16", backbone_stride=None, weights=None,
                    freeze_backbone_layers=0, preprocessing=None, head_channels=None, box_loss_weight=1.0,
                    smooth_l1_beta=1.0 / 9.0, target_encoder_config=None, proposal_config=None, resize=None,
                    objectness_loss="bce", focal_gamma=2.0, focal_alpha=0.25, negative_sampling="random",
                    objectness_target="binary", freeze_batch_norm=False) -> RpnParts:
    """The parts from ``RPNModel``'s arguments (documented there), with its defaults; checked by ``check_parts``."""
    image_size = validate_image_size(image_size)
    target_config = target_encoder_config if isinstance(target_encoder_config, TargetConfig) else \
        config_from_kwargs(TargetConfig, None, target_encoder_config)
    if negative_sampling == "hard" and target_config.target_format == "sparse":
        raise ValueError("negative_sampling='hard' mines among every labeled anchor, which needs dense targets: "
                         "use TargetConfig(target_format='dense')")
    if negative_sampling == "hard" and target_config.sampling != "none":
        target_config = dataclasses.replace(target_config, sampling="none")  # the loss samples itself
    loss = RpnLoss(objectness_loss, focal_gamma, focal_alpha, smooth_l1_beta, box_loss_weight, negative_sampling,
                   target_config.samples_per_image, target_config.positive_fraction, objectness_target)
    if isinstance(backbone, dict):  # from get_config
        backbone = keras.saving.deserialize_keras_object(backbone)
    if anchor_config is not None:
        anchor_config = as_anchor_config(anchor_config)
    if backbone == "simple" and backbone_stride is None:  # the small backbone is built for the anchors' stride
        backbone_stride = (anchor_config or AnchorConfig()).levels[0].stride
    backbone_model, strides, mode = build_backbone(backbone, image_size, weights, backbone_stride,
                                                   int(freeze_backbone_layers), freeze_batch_norm)
    if anchor_config is None:
        anchor_config = AnchorConfig() if len(strides) == 1 else MultiLevelAnchorConfig.fpn(strides)
    target_encoder = RpnTargetEncoder(image_size, anchor_config, target_config, resize=resize)
    if proposal_config is None:
        generator = default_proposal_generator(target_encoder)
    else:
        generator = ProposalGenerator(image_size, anchor_config, config_from_kwargs(ProposalConfig, proposal_config),
                                      target_encoder.box_coder)
    return RpnParts(ImagePreprocessing(preprocessing or mode, name="preprocessing"), backbone_model, target_encoder,
                    default_head(anchor_config, backbone_model, head_channels), loss, generator, strides)


def check_parts(parts: RpnParts) -> None:
    """Checks that the parts fit together — once, for the whole RPN: one canvas size and one anchor layout for the
    encoder and the proposals, the backbone's strides and map sizes those of the anchor levels, one head for every
    level, the loss's sampling possible with the encoder's targets. Raises ``ValueError`` naming the mismatch."""
    encoder, generator = parts.target_encoder, parts.proposal_generator
    image_size, levels = encoder.image_size, encoder.anchor_config.levels
    if generator.image_size != image_size or generator.anchor_config != encoder.anchor_config:
        raise ValueError(f"the proposal generator's canvas / anchors ({generator.image_size}, "
                         f"{generator.anchor_config}) differ from the target encoder's ({image_size}, "
                         f"{encoder.anchor_config}): the outputs would be decoded on the wrong anchors")
    if generator.box_coder != encoder.box_coder:
        raise ValueError(f"the proposal generator decodes with {generator.box_coder} but the targets are encoded "
                         f"with {encoder.box_coder}")
    strides = tuple(parts.backbone_strides)
    if tuple(level.stride for level in levels) != strides:
        raise ValueError(f"the backbone's feature strides are {strides} but the anchor levels' strides are "
                         f"{tuple(level.stride for level in levels)}")
    if len({level.num_anchors_per_location for level in levels}) != 1:
        raise ValueError("every anchor level needs the same number of anchors per location (one shared head)")
    if parts.head.num_anchors_per_location != levels[0].num_anchors_per_location:
        raise ValueError(f"the head predicts {parts.head.num_anchors_per_location} anchors per location but the "
                         f"anchors have {levels[0].num_anchors_per_location}")
    outputs = feature_list(parts.backbone.output)
    if len(outputs) != len(levels):
        raise ValueError(f"the backbone gives {len(outputs)} feature maps but there are {len(levels)} anchor levels")
    for level, shape in zip(levels, feature_shapes(parts.backbone, image_size)):
        expected = level.feature_map_size(image_size)
        if shape != expected:
            raise ValueError(f"the backbone maps {image_size} to a {shape} feature map at stride {level.stride} but "
                             f"the anchors need {expected} (ceil(size / stride))")
    if len({int(output.shape[-1]) for output in outputs}) != 1:
        raise ValueError("one head is shared by every level: the feature maps need the same channel count")
    if parts.loss.negative_sampling == "hard" and (encoder.config.target_format == "sparse"
                                                   or encoder.config.sampling != "none"):
        raise ValueError("negative_sampling='hard' samples in the loss: the encoder needs "
                         "TargetConfig(target_format='dense', sampling='none')")
