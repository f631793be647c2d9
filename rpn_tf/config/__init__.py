"""Frozen configuration dataclasses, one per pipeline stage, holding the article's defaults.

``anchors``: ``AnchorConfig`` / ``MultiLevelAnchorConfig``; ``resize``: ``ResizeConfig`` (image → network canvas);
``stages``: ``TargetConfig`` (labeling, sampling, GT input format), ``ProposalConfig`` (decode → NMS → top-k) and
``RoiSamplerConfig`` (second-stage ROI sampling); ``fields``: the shared field checks. Every default is a named field
so users can see and override it; the values follow the reference article (Faster R-CNN's RPN on an 800×800 VGG16
feature map). Each config validates its fields once, in ``__post_init__``; the classes that use them do not check
again. See ``docs/conventions.md`` for the conventions.
"""

from rpn_tf.config.anchors import (DEFAULT_IMAGE_SIZE, DEFAULT_RATIOS, DEFAULT_SCALES, DEFAULT_STRIDE,  # noqa: F401
                                   AnchorConfig, AnyAnchorConfig, MultiLevelAnchorConfig, anchor_config_to_dict,
                                   as_anchor_config,
                                   validate_image_size)
from rpn_tf.config.fields import config_from_kwargs, config_to_dict  # noqa: F401
from rpn_tf.config.resize import RESIZE_POLICIES, ResizeConfig, as_resize_config, canvas_varies, \
    inference_canvas  # noqa: F401
from rpn_tf.config.stages import (BOX_FORMATS, NMS_IMPLEMENTATIONS, DetectionConfig, ProposalConfig,  # noqa: F401
                                  RoiSamplerConfig,
                                  TargetConfig)
from rpn_tf.ops.box_coder import BBOX_XFORM_CLIP, BoxCoder  # noqa: F401
