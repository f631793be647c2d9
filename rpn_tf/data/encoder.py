"""The RPN target encoder: a ``tf.data`` transform from ``(image, gt_boxes)`` to RPN training targets.

Shape shorthand: B images, A anchors, G ground-truth boxes, M = ``max_boxes`` (the padded GT count),
H × W the network input size.

The encoder only handles the input side — element parsing, box formats, validation, resizing and padding; the
target math (matching, sampling, deltas) is ``rpn_tf.ops.targets.RpnTargetAssigner``.
"""

from __future__ import annotations

import tensorflow as tf

from rpn_tf.config import DEFAULT_IMAGE_SIZE, AnchorConfig, TargetConfig, anchor_config_to_dict, as_anchor_config, \
    as_resize_config, config_from_kwargs, config_to_dict, validate_image_size
from rpn_tf.data.gt_boxes import check_box_tensor, check_boxes_in_image, classes_for, drop_padding_rows, pad_boxes, \
    to_yxyx_pixels, validate_gt_boxes
from rpn_tf.data.resize import prepare_image, resize_to_canvas
from rpn_tf.ops.anchors import anchor_cell_origins, generate_anchors
from rpn_tf.ops.box_ops import clip_boxes
from rpn_tf.ops.sampling import content_seeds
from rpn_tf.ops.targets import RpnTargetAssigner


class RpnTargetEncoder:
    """Computes RPN targets (anchor labels and box deltas) from ground-truth boxes, in pure TensorFlow.

    Use it as ``dataset.map(encoder)``; it also works eagerly, under ``tf.function`` and with
    ``jit_compile=True`` (``encode`` / ``label_anchors``), with identical outputs.

    Args:
      image_size: ``(height, width)`` of the canvas the network sees; ``__call__`` resizes images (and scales
        boxes) onto it by ``resize``.
      anchor_config: ``AnchorConfig`` (article defaults), ``MultiLevelAnchorConfig`` or a sequence of levels.
      config: a ``TargetConfig`` (or a dict of its fields); default ``TargetConfig()``, the article's rules.
      resize: ``ResizeConfig`` or a policy name: ``"letterbox"`` (default: aspect kept, zero padding bottom /
        right), ``"stretch"`` or ``"shorter_side"``. Anchors in an image's padding are ignored (label -1).
      **overrides: ``TargetConfig`` fields (``positive_iou=0.7``, ``negative_iou=0.3``, ``allowed_border=0``,
        ``samples_per_image=256``, ``positive_fraction=0.5``, ``box_format="yxyx"``, ``normalized_boxes=False``,
        ``max_boxes=100``, ``seed=None``, ``validate=True``, ``box_coder``), and ``delta_weights=(wy, wx, wh, ww)``
        as a shorthand for ``box_coder=BoxCoder(delta_weights)``.
    """

    def __init__(self, image_size=DEFAULT_IMAGE_SIZE, anchor_config=None, config=None, *, resize=None, **overrides):
        self.image_size = validate_image_size(image_size)
        self.anchor_config = as_anchor_config(anchor_config if anchor_config is not None else AnchorConfig())
        self.config: TargetConfig = config_from_kwargs(TargetConfig, config, overrides)
        self.resize = as_resize_config(resize)
        self._anchors = generate_anchors(self.image_size, self.anchor_config)
        self.assigner = RpnTargetAssigner(self._anchors.numpy(), self.image_size, self.config,
                                          anchor_cell_origins(self.image_size, self.anchor_config))

    def get_config(self):
        """The encoder's arguments as JSON-ready data: ``from_config`` rebuilds the same encoder. (Registered with
        Keras's serialization by ``rpn_tf.modeling.rpn_parts``, which ``import rpn_tf`` imports, so
        ``keras.saving.serialize_keras_object`` stores one.)"""
        return {"image_size": list(self.image_size), "anchor_config": anchor_config_to_dict(self.anchor_config),
                "config": config_to_dict(self.config), "resize": config_to_dict(self.resize)}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @property
    def anchors(self) -> tf.Tensor:
        """float32 ``Tensor[A, 4]`` yxyx anchors, in the order of every per-anchor output."""
        return self._anchors

    @property
    def num_anchors(self) -> int:
        return int(self._anchors.shape[0])

    @property
    def box_coder(self):
        """The ``BoxCoder`` of the targets (decode predictions with the same one)."""
        return self.config.box_coder

    def _batched(self, gt_boxes, validate=None):
        """Validated (``validate``, default ``config.validate``) float32 ``[B, G, 4]`` yxyx boxes and whether a batch
        axis was added."""
        gt_boxes = check_box_tensor(gt_boxes)
        if self.config.validate if validate is None else validate:
            gt_boxes = validate_gt_boxes(gt_boxes)
        if gt_boxes.shape.rank == 2:
            return gt_boxes[None], True
        return gt_boxes, False

    def label_anchors(self, gt_boxes, valid_sizes=None):
        """Labels before sampling.

        Args:
          gt_boxes: ``Tensor[G, 4]`` or ``Tensor[B, G, 4]`` yxyx canvas pixels (padding rows of -1 are ignored) —
            as every ``gt_boxes`` of rpn-tf; ``box_format`` / ``normalized_boxes`` apply to the ``boxes`` that
            ``__call__`` reads.
          valid_sizes: optional ``(h, w)`` (``[2]`` or ``[B, 2]``) of the unpadded image on the canvas.

        Returns:
          ``(labels, matched_gt_index)``, int32 ``Tensor[A]`` (or ``[B, A]``): labels in {1, 0, -1};
          ``matched_gt_index`` the GT row each anchor is matched to (-1 for outside anchors or no valid GT).
        """
        boxes, added_batch = self._batched(gt_boxes)
        labels, matched_gt_index, _ = self.assigner.matcher(boxes, self.assigner.usable_gt(boxes),
                                                            _batched_sizes(valid_sizes))
        if added_batch:
            return labels[0], matched_gt_index[0]
        return labels, matched_gt_index

    def encode(self, gt_boxes, seeds=None, valid_sizes=None, validate=None):
        """RPN targets after balanced sampling (what ``RPNModel`` computes in its step when given ``gt_boxes``).

        Args:
          gt_boxes: ``Tensor[G, 4]`` or ``Tensor[B, G, 4]`` yxyx canvas pixels (padding rows of -1 are ignored).
          seeds: optional int ``Tensor[B, 2]`` (or ``[2]`` for unbatched input) of stateless seeds overriding
            the encoder's own seeding.
          valid_sizes: optional ``(h, w)`` (``[2]`` or ``[B, 2]``) of the unpadded image on the canvas.
          validate: check the boxes (NaN / Inf, inverted; default ``config.validate``). The models pass ``False``:
            they check batches at their input boundary, where the checks also hold under XLA.

        Returns:
          dict with ``rpn_labels`` int32 ``Tensor[A]`` / ``[B, A]`` in {1, 0, -1} (sampled) and ``rpn_deltas``
          float32 ``Tensor[A, 4]`` / ``[B, A, 4]``: each anchor's deltas to its matched GT box, zeros where
          there is none; with ``target_format="sparse"`` the sampled anchors only (``RpnTargetAssigner``).
        """
        boxes, added_batch = self._batched(gt_boxes, validate)
        targets = self.assigner(boxes, seeds, _batched_sizes(valid_sizes), self.config.target_format,
                                native=self.config.implementation == "native")
        if added_batch:
            return {name: value[0] for name, value in targets.items()}
        return targets

    def __call__(self, image, gt_boxes=None):
        """The ``dataset.map`` transform.

        Args:
          image: ``Tensor[H0, W0, 3]`` (or ``[H0, W0, 1]``) of any numeric dtype, or a dict with ``image``,
            ``boxes`` (``[G, 4]`` in ``box_format``) and optionally ``classes`` (``[G]`` ints).
          gt_boxes: ``Tensor[G, 4]`` in ``box_format`` in the original image's coordinates (tuple input).

        Returns:
          ``(image, targets)``: the image on the ``image_size`` canvas (``resize`` policy, bilinear), in its input
          dtype (uint8 stays uint8, values rounded) and a dict with ``rpn_labels`` ``[A]``, ``rpn_deltas``
          ``[A, 4]`` (with ``target_format="sparse"``: ``rpn_sample_indices`` / ``rpn_sample_labels`` ``[S]`` and
          ``rpn_sample_deltas`` ``[S, 4]`` instead), ``gt_boxes`` ``[M, 4]`` yxyx canvas pixels padded with -1, ``gt_classes`` ``[M]`` padded with
          -1 (1 when the input has no classes), ``num_boxes`` (scalar int32), ``image_scale`` float32 ``[2]``
          (canvas pixels per original pixel, ``(sy, sx)``) and ``valid_size`` int32 ``[2]`` (the unpadded ``(h, w)``
          on the canvas), ``num_ignored_boxes`` (boxes below ``min_gt_size``). Every shape is static, so
          ``.batch(B)`` works. Rows of -1 in the input are padding and dropped; boxes crossing the border are
          clipped to the image; boxes entirely outside it, or that look normalized when ``normalized_boxes`` is
          off, raise ``InvalidArgumentError`` naming the box.
        """
        image, gt_boxes, gt_classes = _parse_element(image, gt_boxes)
        image = prepare_image(image)
        original_size = tf.shape(image)[:2]
        image, scale, valid_size = resize_to_canvas(image, self.image_size, self.resize)
        gt_boxes, gt_classes = drop_padding_rows(gt_boxes, gt_classes)
        if gt_boxes.shape.rank != 2:
            raise ValueError(f"the boxes of one example must be [G, 4], got shape {gt_boxes.shape}")
        # The one place where the input's box format is read: from here on boxes are yxyx pixels.
        boxes = to_yxyx_pixels(gt_boxes, self.config.box_format, self.config.normalized_boxes, original_size)
        if self.config.validate:  # validate_gt_boxes' checks and the image checks in one tf.cond
            boxes = check_boxes_in_image(boxes, original_size, self.config.normalized_boxes, validate=True)
        gt_classes = classes_for(boxes, gt_classes)
        # Boxes crossing the border are clipped to the image, then mapped onto the canvas.
        boxes = clip_boxes(boxes, tf.cast(original_size, tf.float32)) * tf.concat([scale, scale], axis=0)
        padded_boxes, padded_classes, num_boxes = pad_boxes(boxes, gt_classes, self.config.max_boxes)
        # Labels come from the unpadded boxes (padding rows change nothing but cost time); the seed comes from
        # the padded ones, so that encoding a batch of padded GT later (e.g. on the accelerator) gives the same
        # sample.
        seeds = None if self.config.seed is None else content_seeds(self.config.seed, padded_boxes[None])
        targets = {name: value[0] for name, value in
                   self.assigner(boxes[None], seeds, valid_size[None], self.config.target_format,
                                 native=True).items()}
        num_ignored = tf.reduce_sum(tf.cast(~self.assigner.usable_gt(boxes[None])[0], tf.int32))
        targets.update(gt_boxes=padded_boxes, gt_classes=padded_classes, num_boxes=num_boxes, image_scale=scale,
                       valid_size=valid_size, num_ignored_boxes=num_ignored)
        return image, targets


def _batched_sizes(valid_sizes):
    """``None``, ``[2]`` or ``[B, 2]`` valid sizes → ``None`` or ``[B, 2]``."""
    if valid_sizes is None:
        return None
    return tf.reshape(tf.cast(valid_sizes, tf.float32), [-1, 2])


def _parse_element(image, gt_boxes):
    """``(image, gt_boxes, gt_classes or None)`` from a dict element or an ``(image, gt_boxes)`` pair."""
    if isinstance(image, dict):
        if gt_boxes is not None:
            raise ValueError("pass either a dict with 'image' and 'boxes' or (image, gt_boxes), not both")
        missing = [key for key in ("image", "boxes") if key not in image]
        if missing:
            raise KeyError(f"the input dict lacks {missing}; it needs 'image' and 'boxes' "
                           f"(and optionally 'classes'), got keys {sorted(image)}")
        return image["image"], image["boxes"], image.get("classes")
    if gt_boxes is None:
        raise ValueError("RpnTargetEncoder needs (image, gt_boxes) or a dict with 'image' and 'boxes'")
    return image, gt_boxes, None
