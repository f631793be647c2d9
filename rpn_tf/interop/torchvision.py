"""torchvision's Faster R-CNN (``fasterrcnn_resnet50_fpn``) as rpn-tf models, and its checkpoints converted.

``torchvision_rpn`` / ``torchvision_faster_rcnn`` assemble rpn-tf's own parts with torchvision's conventions (the
options each part has; ``docs/conventions.md`` lists every difference from rpn-tf's defaults):

=========================  ==================================================================================
part                       torchvision's setting
=========================  ==================================================================================
transform                  ``ResizeConfig("torchvision")``: shorter side 800 / longer ≤ 1 333 (sizes floored in
                           float64), bilinear in float, padding to a multiple of 32 per batch;
                           ``ImagePreprocessing("torchvision")``: 0–1 pixels normalized by ImageNet's mean / std
backbone                   ResNet-50 v1.5 (``modeling/resnet.py``: stride on the 3×3, no conv biases, symmetric
                           padding) with frozen batch norm; FPN (1×1 lateral + 3×3 output convs with biases,
                           nearest top-down, P6 = stride-2 1×1 max pool of P5, for the RPN only); any input size
anchors                    32–512 px, one size per level × ratios 0.5 / 1 / 2, rounded, grid offset 0, the step
                           ``canvas // map`` (``MultiLevelAnchorConfig.torchvision()``)
RPN                        shared 3×3 conv + ReLU, 1×1 objectness, 1×1 deltas; top 2 000 / 1 000 per level,
                           min size 1e-3 after the top k, NMS 0.7 within each level, best 2 000 / 1 000
                           (``ProposalConfig.torchvision()``); coder (1, 1, 1, 1), clip log(1000 / 16); training
                           on every anchor (``allowed_border=-1``), 256 at 50 %
second stage               ROI Align P2–P5, 7 × 7, sampling ratio 2, ``aligned=False``, torchvision's level
                           mapper; ``TwoMLPHead`` 1024; class-specific predictor; coder (10, 10, 5, 5); 512 ROIs at
                           25 %; score > 0.05, boxes ≥ 0.01 px, per-class NMS 0.5, 100 detections
=========================  ==================================================================================

``FasterRCNN.from_torchvision(source)`` / ``RPNModel.from_torchvision(source)`` build those models and load a
torchvision state dict: a ``.pth`` (read without torch: ``interop.checkpoints``), a ``.safetensors`` file or a dict
of NumPy arrays with torchvision's names. Torchvision's ``(dx, dy, dw, dh)`` deltas become rpn-tf's
``(dy, dx, dh, dw)``, its ``C·H·W`` flattening of ROI features rpn-tf's ``H·W·C``, its 91 class outputs (background +
COCO's ids 1–90) K = 90 classes, so ``detection_classes`` are torchvision's labels. Unknown or missing names and
shape mismatches are named in one ``ValueError``; nothing is loaded unless everything fits.
"""

from __future__ import annotations

import re

import keras
import numpy as np

from rpn_tf.config import MultiLevelAnchorConfig, ProposalConfig, ResizeConfig, RoiSamplerConfig, TargetConfig
from rpn_tf.data.encoder import RpnTargetEncoder
from rpn_tf.modeling.backbones import ImagePreprocessing, freeze_batch_norm
from rpn_tf.modeling.fpn import feature_pyramid
from rpn_tf.modeling.head import RpnHead
from rpn_tf.modeling.proposal_generator import ProposalGenerator
from rpn_tf.modeling.resnet import freeze_stages, torchvision_resnet50

# the training canvas of the tf.data encoder (any image of the transform fits: ≤ 1 333 → 1 344 = 42 × 32)
TORCHVISION_IMAGE_SIZE = (1344, 1344)
PYRAMID_CHANNELS = 256
NUM_ANCHORS = 3


def torchvision_backbone(batch_norm_epsilon=1e-5):
    """torchvision's ResNet-50-FPN backbone as a Keras model of any input size: normalized images → P2–P6."""
    inputs = keras.Input((None, None, 3), name="images")
    return feature_pyramid(inputs, torchvision_resnet50(inputs, batch_norm_epsilon), PYRAMID_CHANNELS, name="fpn")


def torchvision_rpn(image_size=TORCHVISION_IMAGE_SIZE, batch_norm_epsilon=1e-5, frozen_batch_norm=True,
                    trainable_backbone_layers=5, **kwargs):
    """An ``RPNModel`` with torchvision's ``fasterrcnn_resnet50_fpn`` RPN (module docstring), random weights.

    Args:
      image_size: the fixed canvas of the ``tf.data`` encoder (training); ``predict`` and the served graph use each
        batch's own canvas, as torchvision.
      batch_norm_epsilon: 1e-5 (torchvision's; its COCO checkpoint uses 0).
      frozen_batch_norm: batch norm in inference mode (torchvision's ``FrozenBatchNorm2d`` with pretrained
        weights).
      trainable_backbone_layers: torchvision's (0–5): the top stages of the ResNet that train.
      **kwargs: ``RPNModel.from_parts``' (``seed``, ``bounding_box_format``, ``recall_top_n``).
    """
    from rpn_tf.modeling.rpn_model import RPNModel

    backbone = torchvision_backbone(batch_norm_epsilon)
    if frozen_batch_norm:
        freeze_batch_norm(backbone)
    freeze_stages(backbone, trainable_backbone_layers)
    anchors = MultiLevelAnchorConfig.torchvision()
    encoder = RpnTargetEncoder(image_size, anchors, TargetConfig(allowed_border=-1.0), resize=ResizeConfig("torchvision"))
    generator = ProposalGenerator(image_size, anchors, ProposalConfig.torchvision(), encoder.box_coder)
    return RPNModel.from_parts(backbone, encoder, head=RpnHead(NUM_ANCHORS, PYRAMID_CHANNELS, name="rpn_head"),
                               proposal_generator=generator,
                               preprocessing=ImagePreprocessing("torchvision", name="preprocessing"), **kwargs)


def torchvision_faster_rcnn(num_classes=90, rpn=None, **kwargs):
    """A ``FasterRCNN`` with torchvision's ``fasterrcnn_resnet50_fpn`` settings (module docstring), random weights;
    ``rpn`` default ``torchvision_rpn()``; ``num_classes`` 90 (COCO's ids 1–90)."""
    from rpn_tf.modeling.faster_rcnn import FasterRCNN

    settings = dict(roi_sampler_config=RoiSamplerConfig(num_samples=512, positive_fraction=0.25),
                    roi_output_size=7, sampling_ratio=2, aligned=False, representation_size=1024, num_fc=2,
                    level_mapper="torchvision")
    settings.update(kwargs)
    return FasterRCNN(num_classes, rpn=rpn if rpn is not None else torchvision_rpn(), **settings)


# -- the state dict ----------------------------------------------------------------------------------------------
def _conv_kernel(weight):
    """torch ``(O, I, kh, kw)`` → Keras ``(kh, kw, I, O)``."""
    return np.transpose(weight, (2, 3, 1, 0))


def _deltas_xy_to_yx(values, axis):
    """torchvision's delta channels ``(dx, dy, dw, dh)`` per anchor / class → rpn-tf's ``(dy, dx, dh, dw)``."""
    count = values.shape[axis] // 4
    order = np.arange(4 * count).reshape(count, 4)[:, [1, 0, 3, 2]].reshape(-1)
    return np.take(values, order, axis=axis)


def _legacy_name(name):
    """Old torchvision names (``rpn.head.conv.weight``, ``fpn.inner_blocks.0.weight``; torchvision < 0.13) →
    today's (``rpn.head.conv.0.0.weight``, ``fpn.inner_blocks.0.0.weight``), as torchvision's own loaders do."""
    name = re.sub(r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1", name)
    return re.sub(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$", r"backbone.fpn.\1_blocks.\2.0.\3",
                  name)


def _batch_norm(layer, prefix):
    return [(layer.gamma, f"{prefix}.weight", None), (layer.beta, f"{prefix}.bias", None),
            (layer.moving_mean, f"{prefix}.running_mean", None),
            (layer.moving_variance, f"{prefix}.running_var", None)]


def _backbone_plan(backbone):
    """(variable, state-dict name, transform) of every backbone weight."""
    plan = []
    for layer in backbone.layers:
        name = layer.name
        match = re.fullmatch(r"(conv1|layer\d_\d+_conv\d|layer\d_\d+_downsample_0)", name)
        if match:
            plan.append((layer.kernel, "backbone.body." + _torch_path(name) + ".weight", _conv_kernel))
            continue
        if re.fullmatch(r"(bn1|layer\d_\d+_bn\d|layer\d_\d+_downsample_1)", name):
            plan += _batch_norm(layer, "backbone.body." + _torch_path(name))
            continue
        match = re.fullmatch(r"fpn_(lateral|output)(\d+)", name)
        if match:
            kind = "inner_blocks" if match.group(1) == "lateral" else "layer_blocks"
            prefix = f"backbone.fpn.{kind}.{match.group(2)}.0"
            plan += [(layer.kernel, f"{prefix}.weight", _conv_kernel), (layer.bias, f"{prefix}.bias", None)]
    return plan


def _torch_path(name):
    """``layer2_0_downsample_1`` → ``layer2.0.downsample.1``."""
    return name.replace("_", ".")


def _rpn_plan(rpn):
    head = rpn.head
    return [(head.conv.kernel, "rpn.head.conv.0.0.weight", _conv_kernel), (head.conv.bias, "rpn.head.conv.0.0.bias", None),
            (head.objectness.kernel, "rpn.head.cls_logits.weight", _conv_kernel),
            (head.objectness.bias, "rpn.head.cls_logits.bias", None),
            (head.deltas.kernel, "rpn.head.bbox_pred.weight",
             lambda w: _deltas_xy_to_yx(_conv_kernel(w), axis=3)),
            (head.deltas.bias, "rpn.head.bbox_pred.bias", lambda b: _deltas_xy_to_yx(b, axis=0))]


def _fc6(weight, size):
    """``fc6`` of ``TwoMLPHead`` reads ROI features flattened ``C·H·W`` (torch's NCHW); rpn-tf flattens
    ``H·W·C``: the input rows permuted, then transposed to a Dense kernel."""
    out, inputs = weight.shape
    channels = inputs // (size * size)
    return weight.reshape(out, channels, size, size).transpose(0, 2, 3, 1).reshape(out, inputs).T


def _roi_heads_plan(roi_heads):
    head = roi_heads.box_head
    if head.num_conv or head.num_fc != 2:
        raise ValueError("torchvision's TwoMLPHead is 2 × FC: the box head needs num_fc=2, num_conv=0")
    size = roi_heads.roi_output_size
    return [(head.fcs[0].kernel, "roi_heads.box_head.fc6.weight", lambda w: _fc6(w, size)),
            (head.fcs[0].bias, "roi_heads.box_head.fc6.bias", None),
            (head.fcs[1].kernel, "roi_heads.box_head.fc7.weight", np.transpose),
            (head.fcs[1].bias, "roi_heads.box_head.fc7.bias", None),
            (head.classifier.kernel, "roi_heads.box_predictor.cls_score.weight", np.transpose),
            (head.classifier.bias, "roi_heads.box_predictor.cls_score.bias", None),
            # the background's 4 deltas (torchvision's class 0) are never used
            (head.regressor.kernel, "roi_heads.box_predictor.bbox_pred.weight",
             lambda w: _deltas_xy_to_yx(w[4:].T, axis=1)),
            (head.regressor.bias, "roi_heads.box_predictor.bbox_pred.bias", lambda b: _deltas_xy_to_yx(b[4:], axis=0))]


IGNORED = re.compile(r".*\.num_batches_tracked$")


def read_torchvision_state_dict(source):
    """``{name: float32 array}`` from a ``.pth`` / ``.safetensors`` path or a dict of arrays, legacy names renamed
    and ``num_batches_tracked`` dropped."""
    if isinstance(source, str):
        from rpn_tf.interop.checkpoints import load_state_dict

        source = load_state_dict(source)
    if not isinstance(source, dict):
        raise TypeError(f"source must be a checkpoint path or a dict of arrays, got {type(source).__name__}")
    return {_legacy_name(name): np.asarray(value) for name, value in source.items() if not IGNORED.match(name)}


def load_torchvision_weights(plan, state_dict, what):
    """Assigns ``state_dict`` to ``plan`` — after checking that every name is known, none missing, every shape
    right (one ``ValueError`` naming all the problems; nothing assigned unless everything fits)."""
    wanted = {name for _, name, _ in plan}
    unknown = sorted(set(state_dict) - wanted)
    missing = sorted(wanted - set(state_dict))
    problems, values = [], []
    for variable, name, transform in plan:
        if name not in state_dict:
            continue
        value = np.asarray(state_dict[name], np.float32)
        value = transform(value) if transform is not None else value
        if tuple(value.shape) != tuple(variable.shape):
            problems.append(f"{name}: shape {tuple(state_dict[name].shape)} → {tuple(value.shape)}, the model "
                            f"needs {tuple(variable.shape)}")
        values.append((variable, value))
    if unknown or missing or problems:
        lines = [f"the state dict does not fit {what}:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing[:12])}{' …' if len(missing) > 12 else ''}")
        if unknown:
            lines.append(f"  unknown ({len(unknown)}): {', '.join(unknown[:12])}{' …' if len(unknown) > 12 else ''}")
        lines += [f"  {problem}" for problem in problems[:12]]
        raise ValueError("\n".join(lines))
    for variable, value in values:
        variable.assign(value)


def _batch_norm_epsilon(state_dict, batch_norm_epsilon):
    """torchvision's ``FrozenBatchNorm2d`` checkpoints (no ``num_batches_tracked``: the COCO weights and their
    fine-tunes) use ε = 0 (``overwrite_eps``), ``BatchNorm2d`` ones (``weights=None`` models) 1e-5. A checkpoint
    trained from ImageNet weights alone (``weights_backbone=...``: ``FrozenBatchNorm2d`` with ε = 1e-5, never
    overwritten) cannot be told apart by its names: pass ``batch_norm_epsilon=1e-5`` for one."""
    if batch_norm_epsilon != "auto":
        return float(batch_norm_epsilon)
    return 1e-5 if any(IGNORED.match(name) for name in state_dict) else 0.0


def num_classes_of(state_dict):
    """K of a torchvision state dict: its classifier's outputs minus the background."""
    weight = state_dict.get("roi_heads.box_predictor.cls_score.weight")
    if weight is None:
        raise ValueError("the state dict has no roi_heads.box_predictor.cls_score.weight: not a torchvision "
                         "Faster R-CNN (use RPNModel.from_torchvision for the RPN alone)")
    return int(np.shape(weight)[0]) - 1


def rpn_from_torchvision(source, batch_norm_epsilon="auto", trainable_backbone_layers=3,
                         image_size=TORCHVISION_IMAGE_SIZE, **kwargs):
    """``RPNModel.from_torchvision``: torchvision's RPN (backbone + RPN head) with the weights of ``source``; the
    state dict's second-stage weights, if any, are not used."""
    raw = _raw_names(source)
    state_dict = read_torchvision_state_dict(raw)
    epsilon = _batch_norm_epsilon(raw, batch_norm_epsilon)
    rpn = torchvision_rpn(image_size, batch_norm_epsilon=epsilon, trainable_backbone_layers=trainable_backbone_layers,
                          **kwargs)
    rpn_names = {name: value for name, value in state_dict.items() if not name.startswith("roi_heads.")}
    load_torchvision_weights(_backbone_plan(rpn.backbone) + _rpn_plan(rpn), rpn_names, "torchvision's RPN")
    return rpn


def _raw_names(source):
    """The names of a checkpoint before ``num_batches_tracked`` is dropped (for the batch-norm ε)."""
    from rpn_tf.interop.checkpoints import load_state_dict

    return load_state_dict(source) if isinstance(source, str) else source


def faster_rcnn_from_torchvision(source, batch_norm_epsilon="auto", trainable_backbone_layers=3,
                                 image_size=TORCHVISION_IMAGE_SIZE, **kwargs):
    """``FasterRCNN.from_torchvision``: torchvision's ``fasterrcnn_resnet50_fpn`` with the weights of ``source``
    (K read from the checkpoint: 90 for COCO's, so ``detection_classes`` are torchvision's labels)."""
    raw = _raw_names(source)
    state_dict = read_torchvision_state_dict(raw)
    epsilon = _batch_norm_epsilon(raw, batch_norm_epsilon)
    rpn = torchvision_rpn(image_size, batch_norm_epsilon=epsilon, trainable_backbone_layers=trainable_backbone_layers)
    model = torchvision_faster_rcnn(num_classes_of(state_dict), rpn=rpn, **kwargs)
    plan = _backbone_plan(rpn.backbone) + _rpn_plan(rpn) + _roi_heads_plan(model.roi_heads)
    load_torchvision_weights(plan, state_dict, "torchvision's fasterrcnn_resnet50_fpn")
    return model
