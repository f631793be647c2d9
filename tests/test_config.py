import dataclasses
import json

import pytest

import rpn_tf
from rpn_tf.config import config_from_kwargs, config_to_dict


def test_defaults_are_the_articles():
    target = rpn_tf.TargetConfig()
    assert (target.positive_iou, target.negative_iou, target.samples_per_image, target.positive_fraction) == \
        (0.7, 0.3, 256, 0.5)
    assert target.allowed_border == 0 and target.box_coder == rpn_tf.BoxCoder((1, 1, 1, 1))
    proposals = rpn_tf.ProposalConfig()
    assert proposals.top_k(training=True) == (12000, 2000) and proposals.top_k(training=False) == (6000, 300)
    assert (proposals.nms_iou, proposals.min_size) == (0.7, 16)
    rois = rpn_tf.RoiSamplerConfig()
    assert (rois.num_samples, rois.positive_fraction, rois.positive_iou) == (128, 0.25, 0.5)
    assert rois.box_coder == rpn_tf.BoxCoder((10, 10, 5, 5))


@pytest.mark.parametrize("config_class,kwargs,message", [
    (rpn_tf.TargetConfig, {"positive_iou": 0.3, "negative_iou": 0.7}, "negative_iou <= positive_iou"),
    (rpn_tf.TargetConfig, {"samples_per_image": 0}, "samples_per_image"),
    (rpn_tf.TargetConfig, {"max_boxes": 2.5}, "max_boxes"),
    (rpn_tf.TargetConfig, {"allowed_border": float("inf")}, "allowed_border"),
    (rpn_tf.TargetConfig, {"seed": "1"}, "seed"),
    (rpn_tf.TargetConfig, {"box_format": "cxcywh"}, "box_format"),
    (rpn_tf.RoiSamplerConfig, {"negative_iou_range": (0.5, 0.1)}, "negative_iou_range"),
    (rpn_tf.RoiSamplerConfig, {"positive_iou": 0}, "positive_iou"),
    (rpn_tf.RoiSamplerConfig, {"num_samples": -1}, "num_samples"),
    (rpn_tf.ProposalConfig, {"min_size": -1}, "min_size"),
])
def test_each_config_validates_once_with_a_named_error(config_class, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config_class(**kwargs)


def test_configs_are_frozen_and_round_trip_through_json():
    config = rpn_tf.TargetConfig(seed=3, box_coder=rpn_tf.BoxCoder((2, 2, 1, 1)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 4
    restored = config_from_kwargs(rpn_tf.TargetConfig, json.loads(json.dumps(config_to_dict(config))))
    assert restored == config
    rois = rpn_tf.RoiSamplerConfig(negative_iou_range=(0.1, 0.5))
    assert config_from_kwargs(rpn_tf.RoiSamplerConfig, json.loads(json.dumps(config_to_dict(rois)))) == rois


def test_keyword_overrides_and_unknown_fields():
    config = config_from_kwargs(rpn_tf.TargetConfig, rpn_tf.TargetConfig(seed=1), {"delta_weights": (1, 1, 2, 2)})
    assert config.seed == 1 and config.box_coder.weights == (1, 1, 2, 2)
    with pytest.raises(TypeError, match="unknown TargetConfig fields"):
        rpn_tf.RpnTargetEncoder(positive_iuo=0.5)
    with pytest.raises(TypeError, match="unknown RoiSamplerConfig fields"):
        rpn_tf.RoiSampler(samples=3)
    encoder = rpn_tf.RpnTargetEncoder((32, 32), rpn_tf.AnchorConfig(stride=16, scales=(1,), ratios=(1,)),
                                      rpn_tf.TargetConfig(samples_per_image=8), seed=5)
    assert encoder.config.samples_per_image == 8 and encoder.config.seed == 5
