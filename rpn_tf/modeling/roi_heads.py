"""``RoiHeads``: the second stage of Faster R-CNN as one part (torchvision's ``RoIHeads``) — multi-level ROI Align on
the backbone's maps, the ``BoxHead``, ROI sampling and the Fast R-CNN losses in training, detection post-processing
in inference.

Shape shorthand: B images, N proposals per image, R sampled ROIs, S ROI Align output size, C channels, K object
classes (background excluded; class ids 1…K), D detections per image.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from rpn_tf.config import DetectionConfig, RoiSamplerConfig, config_from_kwargs, config_to_dict
from rpn_tf.modeling.box_head import BoxHead
from rpn_tf.modeling.losses import roi_losses
from rpn_tf.ops.detections import postprocess_detections
from rpn_tf.ops.nms import resolve_nms
from rpn_tf.ops.roi_align import LEVEL_MAPPERS, multilevel_roi_align
from rpn_tf.ops.roi_sampling import RoiSampler


def default_roi_strides(feature_strides):
    """The strides ROI Align reads by default: a single map's, or for a pyramid every level up to stride 32 (P2–P5
    of P2–P6: the subsampled top level is the RPN's only, as in detectron2 and torchvision)."""
    strides = tuple(int(s) for s in feature_strides)
    if len(strides) == 1:
        return strides
    return tuple(s for s in strides if s <= 32) or strides[:1]


@keras.saving.register_keras_serializable(package="rpn_tf")
class RoiHeads(keras.layers.Layer):
    """ROI features → class scores and class-specific boxes; the Fast R-CNN losses on sampled ROIs.

    Args:
      num_classes: K, object classes (background excluded).
      feature_strides: the strides of the backbone's maps, finest first (the maps ``loss_terms`` / ``detect`` get).
      channels: channels of those maps.
      roi_strides: the strides ROI Align reads (``default_roi_strides``).
      roi_sampler_config: ``RoiSamplerConfig`` (or dict): the article's 128 ROIs at 25 %, stage-two coder weights
        (10, 10, 5, 5). With its ``seed`` set, each image's sample is a function of that seed and its GT boxes (the
        same every epoch); without (the default), the seeds come with each call (the model's seed generator).
      detection_config: ``DetectionConfig`` (or dict): score > 0.05, per-class NMS 0.5, 100 detections.
      roi_output_size / sampling_ratio / aligned: ROI Align's (7, 2, half-pixel aligned).
      representation_size / num_fc / num_conv / conv_channels: ``BoxHead``'s (2 × FC 1024).
      smooth_l1_beta: the box loss's smooth-L1 transition (1/9, torchvision's).
      level_mapper: the FPN level of a box (``assign_levels``): ``"fpn"`` or ``"torchvision"``.
    """

    def __init__(self, num_classes, feature_strides, channels, roi_strides=None, roi_sampler_config=None,
                 detection_config=None, roi_output_size=7, sampling_ratio=2, aligned=True, representation_size=1024,
                 num_fc=2, num_conv=0, conv_channels=256, smooth_l1_beta=1.0 / 9.0, level_mapper="fpn", **kwargs):
        super().__init__(**kwargs)
        if level_mapper not in LEVEL_MAPPERS:
            raise ValueError(f"level_mapper must be one of {LEVEL_MAPPERS}, got {level_mapper!r}")
        self.level_mapper = level_mapper
        self.feature_strides = tuple(int(s) for s in feature_strides)
        self.roi_strides = tuple(int(s) for s in (roi_strides or default_roi_strides(self.feature_strides)))
        missing = [s for s in self.roi_strides if s not in self.feature_strides]
        if missing:
            raise ValueError(f"roi_strides {self.roi_strides} are not all among the backbone's strides "
                             f"{self.feature_strides}")
        self.channels = int(channels)
        self.roi_sampler_config = config_from_kwargs(RoiSamplerConfig, roi_sampler_config)
        # unseeded: the seeds come with each call (no generator of the sampler's own)
        sampler_seed = 0 if self.roi_sampler_config.seed is None else self.roi_sampler_config.seed
        self.roi_sampler = RoiSampler(dataclasses.replace(self.roi_sampler_config, seed=sampler_seed))
        self.detection_config = config_from_kwargs(DetectionConfig, detection_config)
        self.roi_output_size, self.sampling_ratio = int(roi_output_size), int(sampling_ratio)
        self.aligned, self.smooth_l1_beta = bool(aligned), float(smooth_l1_beta)
        self.box_head = BoxHead(num_classes, representation_size, num_fc, num_conv, conv_channels, name="box_head")
        self.box_head.build((None, None, self.roi_output_size, self.roi_output_size, self.channels))
        self.built = True

    @property
    def num_classes(self) -> int:
        return self.box_head.num_classes

    @property
    def box_coder(self):
        """The stage-two ``BoxCoder`` (weights 10, 10, 5, 5 by default)."""
        return self.roi_sampler_config.box_coder

    def roi_features(self, features, rois, xla=False):
        """``[B, R, S, S, C]`` ROI Align features of ``rois`` ``[B, R, 4]`` (yxyx canvas pixels, no gradient) from
        the backbone's maps ``features`` (finest first); ``xla``: the gather implementation (compiles under XLA)
        instead of ``crop_and_resize``."""
        selected = [feature for feature, stride in zip(features, self.feature_strides) if stride in self.roi_strides]
        return multilevel_roi_align(selected, self.roi_strides, tf.stop_gradient(rois), self.roi_output_size,
                                    self.sampling_ratio, self.aligned,
                                    implementation="gather" if xla else "crop_and_resize",
                                    level_mapper=self.level_mapper)

    def call(self, roi_features):
        """``BoxHead``: ``(class_logits [B, R, K + 1], box_deltas [B, R, K, 4])``."""
        return self.box_head(roi_features)

    def loss_terms(self, features, proposals, num_proposals, gt_boxes, gt_classes, seeds, xla=False):
        """The Fast R-CNN loss sums of one step: ROIs sampled from ``proposals`` ``[B, N, 4]`` (``num_proposals``
        valid) and the GT (``gt_boxes`` ``[B, M, 4]`` yxyx canvas pixels padded with -1, ``gt_classes`` ``[B, M]``)
        with ``seeds`` (int64 ``[B, 2]``), then ``roi_losses``: ``(classification_sum, box_sum, num_sampled,
        num_correct)``."""
        if self.roi_sampler_config.seed is not None:  # the config's content seeds
            seeds = None
        samples = self.roi_sampler(proposals, gt_boxes, gt_classes, num_proposals, seeds=seeds)
        logits, deltas = self(self.roi_features(features, samples["rois"], xla))
        return roi_losses(logits, deltas, samples["roi_classes"], samples["roi_deltas"], self.smooth_l1_beta)

    def detect(self, features, proposals, num_proposals, valid_sizes, xla=False):
        """Detections of ``proposals`` ``[B, N, 4]`` in canvas pixels, clipped to ``valid_sizes`` ``[B, 2]`` (each
        image's part of the canvas): ``postprocess_detections``' dict. ``xla`` resolves ``nms="auto"`` and ROI
        Align's implementation."""
        logits, deltas = self(self.roi_features(features, proposals, xla))
        return postprocess_detections(proposals, num_proposals, logits, deltas, self.box_coder, valid_sizes,
                                      self.detection_config, resolve_nms(self.detection_config.nms, xla))

    def get_config(self):
        head = self.box_head
        return {**super().get_config(), "num_classes": self.num_classes, "feature_strides": list(self.feature_strides),
                "channels": self.channels, "roi_strides": list(self.roi_strides),
                "roi_sampler_config": config_to_dict(self.roi_sampler_config),
                "detection_config": config_to_dict(self.detection_config), "roi_output_size": self.roi_output_size,
                "sampling_ratio": self.sampling_ratio, "aligned": self.aligned,
                "representation_size": head.representation_size, "num_fc": head.num_fc, "num_conv": head.num_conv,
                "conv_channels": head.conv_channels, "smooth_l1_beta": self.smooth_l1_beta,
                "level_mapper": self.level_mapper}
