"""The RPN target encoder: a ``tf.data`` transform from ``(image, gt_boxes)`` to RPN training targets.

Shape shorthand: B images, A anchors, G ground-truth boxes, M = ``max_boxes`` (the padded GT count),
H × W the network input size.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from rpn_tf import box_ops
from rpn_tf.anchors import generate_anchors
from rpn_tf.config import DEFAULT_IMAGE_SIZE, AnchorConfig, as_anchor_config, validate_image_size
from rpn_tf.matching import IGNORE, AnchorMatcher
from rpn_tf.sampling import content_seeds, random_seeds, sample_balanced

GT_PADDING_VALUE = -1.0
CLASS_PADDING_VALUE = -1
DEFAULT_CLASS = 1  # class given to boxes of inputs that carry no classes (class-agnostic "object")


def validate_gt_boxes(gt_boxes, name="gt_boxes"):
    """Raises ``InvalidArgumentError`` (via ``tf.debugging``) if yxyx ``gt_boxes`` hold non-finite values or
    inverted boxes (y2 < y1 or x2 < x1). Padding rows of -1 and zero-area boxes pass. Returns ``gt_boxes``."""
    gt_boxes = tf.debugging.assert_all_finite(
        gt_boxes, f"{name} contain NaN or Inf coordinates; boxes must be finite [y1, x1, y2, x2] pixels")
    inverted = (gt_boxes[..., 2] < gt_boxes[..., 0]) | (gt_boxes[..., 3] < gt_boxes[..., 1])
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(inverted)),
        [f"{name} contain inverted boxes (y2 < y1 or x2 < x1); boxes must be [y1, x1, y2, x2] with y1 <= y2 "
         "and x1 <= x2 (check box_format). First inverted box:",
         tf.boolean_mask(tf.reshape(gt_boxes, [-1, 4]), tf.reshape(inverted, [-1]))[:1]],
        name="assert_gt_boxes_not_inverted")
    with tf.control_dependencies([check]):
        return tf.identity(gt_boxes)


def pad_boxes(gt_boxes, gt_classes, max_boxes: int):
    """Pads ``[G, 4]`` boxes with -1 rows and ``[G]`` classes with -1 to ``max_boxes``.

    Raises ``InvalidArgumentError`` if ``G > max_boxes``: no box is ever dropped silently.

    Returns:
      ``(boxes [M, 4] float32, classes [M] int32, num_boxes int32 scalar)``.
    """
    num_boxes = tf.shape(gt_boxes)[0]
    check = tf.debugging.assert_less_equal(
        num_boxes, max_boxes,
        message=f"an example has more GT boxes than max_boxes={max_boxes}; raise max_boxes so none is dropped")
    with tf.control_dependencies([check]):
        padding = max_boxes - num_boxes
    boxes = tf.pad(gt_boxes, [[0, padding], [0, 0]], constant_values=GT_PADDING_VALUE)
    classes = tf.pad(gt_classes, [[0, padding]], constant_values=CLASS_PADDING_VALUE)
    return tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(classes, [max_boxes]), num_boxes


class RpnTargetEncoder:
    """Computes RPN targets (anchor labels and box deltas) from ground-truth boxes, in pure TensorFlow.

    Use it as ``dataset.map(encoder)``; it also works eagerly, under ``tf.function`` and with
    ``jit_compile=True`` (``encode`` / ``label_anchors``), with identical outputs.

    Args:
      image_size: ``(height, width)`` the network sees; ``__call__`` resizes images (and scales boxes) to it.
      anchor_config: ``AnchorConfig`` (article defaults), ``MultiLevelAnchorConfig`` or a sequence of levels.
      positive_iou: an anchor with max IoU ≥ this is positive (0.7).
      negative_iou: an anchor with max IoU < this is negative (0.3).
      allowed_border: anchors crossing the image border by more than this many pixels are ignored (0);
        a negative value keeps all anchors.
      samples_per_image: anchors sampled per image for the loss (256).
      positive_fraction: largest share of positives in the sample (0.5).
      delta_weights: ``(wy, wx, wh, ww)`` multiplying the regression targets (all 1, as in the article).
      box_format: format of the GT boxes given to this encoder: ``"yxyx"``, ``"xyxy"`` or ``"xywh"``.
      normalized_boxes: whether those boxes are in ``[0, 1]`` units of the image height / width.
      max_boxes: GT boxes are padded to this count in ``__call__``'s output (more raises an error).
      seed: ``None`` for fresh random samples on every call; an int makes the sample a deterministic function of
        ``(seed, padded GT boxes)``, so every pass over a dataset gives identical targets.
      validate: check GT boxes for NaN/Inf and inverted boxes (``InvalidArgumentError`` naming the problem).
    """

    def __init__(self, image_size=DEFAULT_IMAGE_SIZE, anchor_config=None, positive_iou=0.7, negative_iou=0.3,
                 allowed_border=0.0, samples_per_image=256, positive_fraction=0.5,
                 delta_weights=(1.0, 1.0, 1.0, 1.0), box_format="yxyx", seed=None, *, normalized_boxes=False,
                 max_boxes=100, validate=True):
        self.image_size = validate_image_size(image_size)
        self.anchor_config = as_anchor_config(anchor_config if anchor_config is not None else AnchorConfig())
        if not 0.0 <= negative_iou <= positive_iou <= 1.0:
            raise ValueError("need 0 <= negative_iou <= positive_iou <= 1, got "
                             f"negative_iou={negative_iou}, positive_iou={positive_iou}")
        if not math.isfinite(allowed_border):
            raise ValueError(f"allowed_border must be finite, got {allowed_border}")
        if int(samples_per_image) != samples_per_image or samples_per_image <= 0:
            raise ValueError(f"samples_per_image must be a positive integer, got {samples_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        delta_weights = tuple(float(w) for w in delta_weights)
        if len(delta_weights) != 4 or any(not math.isfinite(w) or w <= 0 for w in delta_weights):
            raise ValueError(f"delta_weights must be 4 finite positive numbers, got {delta_weights}")
        if box_format not in box_ops.BOX_FORMATS:
            raise ValueError(f"box_format must be one of {box_ops.BOX_FORMATS}, got {box_format!r}")
        if int(max_boxes) != max_boxes or max_boxes <= 0:
            raise ValueError(f"max_boxes must be a positive integer, got {max_boxes}")
        if seed is not None and (isinstance(seed, bool) or int(seed) != seed):
            raise ValueError(f"seed must be None or an int, got {seed!r}")

        self.positive_iou = float(positive_iou)
        self.negative_iou = float(negative_iou)
        self.allowed_border = float(allowed_border)
        self.samples_per_image = int(samples_per_image)
        self.positive_fraction = float(positive_fraction)
        self.delta_weights = delta_weights
        self.box_format = box_format
        self.normalized_boxes = bool(normalized_boxes)
        self.max_boxes = int(max_boxes)
        self.seed = None if seed is None else int(seed)
        self.validate = bool(validate)

        # Unseeded sampling draws from a stateful generator: new samples on every pass over a dataset.
        self._generator = tf.random.Generator.from_non_deterministic_state() if self.seed is None else None
        self._anchors = generate_anchors(self.image_size, self.anchor_config)
        self._matcher = AnchorMatcher(self._anchors, self.image_size, self.allowed_border, self.positive_iou,
                                      self.negative_iou)
        # Per inside anchor: (centre y, centre x, log h, log w) and (wy / h, wx / w, wh, ww), as constants.
        inside = self._matcher.inside_anchors.numpy().astype(np.float64)
        heights, widths = inside[:, 2] - inside[:, 0], inside[:, 3] - inside[:, 1]
        self._anchor_terms = tf.constant(np.stack([inside[:, 0] + 0.5 * heights, inside[:, 1] + 0.5 * widths,
                                                   np.log(heights), np.log(widths)], axis=1), tf.float32)
        wy, wx, wh, ww = self.delta_weights
        self._anchor_scales = tf.constant(np.stack([wy / heights, wx / widths, np.full_like(heights, wh),
                                                    np.full_like(widths, ww)], axis=1), tf.float32)

    @property
    def anchors(self) -> tf.Tensor:
        """float32 ``Tensor[A, 4]`` yxyx anchors, in the order of every per-anchor output."""
        return self._anchors

    @property
    def num_anchors(self) -> int:
        return int(self._anchors.shape[0])

    def _to_network_boxes(self, gt_boxes, image_size):
        """Converts ``box_format`` boxes (of an image of ``image_size``) to yxyx absolute pixels."""
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        if gt_boxes.shape.rank is not None and gt_boxes.shape.rank not in (2, 3):
            raise ValueError(f"gt_boxes must be [G, 4] or [B, G, 4], got shape {gt_boxes.shape}")
        if gt_boxes.shape[-1] is not None and gt_boxes.shape[-1] != 4:
            raise ValueError(f"gt_boxes must have 4 coordinates in the last axis, got shape {gt_boxes.shape}")
        if self.box_format == "yxyx" and not self.normalized_boxes:
            return gt_boxes
        converted = box_ops.convert_boxes(gt_boxes, self.box_format, "yxyx", image_size=image_size,
                                          source_normalized=self.normalized_boxes)
        # Padding rows (all -1) stay padding whatever the format (xywh's -1 rows would read as inverted boxes).
        padding = tf.reduce_all(gt_boxes == GT_PADDING_VALUE, axis=-1, keepdims=True)
        return tf.where(padding, GT_PADDING_VALUE, converted)

    def _batched(self, gt_boxes, image_size=None):
        """Converts to yxyx network pixels, validates, and returns ``([B, G, 4] boxes, batch axis added?)``."""
        gt_boxes = self._to_network_boxes(gt_boxes, self.image_size if image_size is None else image_size)
        if self.validate:
            gt_boxes = validate_gt_boxes(gt_boxes)
        if gt_boxes.shape.rank == 2:
            return gt_boxes[None], True
        return gt_boxes, False

    def label_anchors(self, gt_boxes):
        """Labels before sampling.

        Args:
          gt_boxes: ``Tensor[G, 4]`` or ``Tensor[B, G, 4]`` in ``box_format``, in network-input pixels.

        Returns:
          ``(labels, matched_gt_index)``, int32 ``Tensor[A]`` (or ``[B, A]``): labels in {1, 0, -1};
          ``matched_gt_index`` the GT row each anchor is matched to (-1 for outside anchors or no valid GT).
        """
        boxes, added_batch = self._batched(gt_boxes)
        labels, matched_gt_index, _ = self._matcher(boxes)
        if added_batch:
            return labels[0], matched_gt_index[0]
        return labels, matched_gt_index

    def encode(self, gt_boxes, seeds=None):
        """RPN targets after balanced sampling.

        Args:
          gt_boxes: ``Tensor[G, 4]`` or ``Tensor[B, G, 4]`` in ``box_format``, network-input pixels
            (padding rows of -1 are ignored).
          seeds: optional int ``Tensor[B, 2]`` (or ``[2]`` for unbatched input) of stateless seeds overriding
            the encoder's own seeding.

        Returns:
          dict with ``rpn_labels`` int32 ``Tensor[A]`` / ``[B, A]`` in {1, 0, -1} (sampled) and ``rpn_deltas``
          float32 ``Tensor[A, 4]`` / ``[B, A, 4]``: each anchor's deltas to its matched GT box, zeros where
          there is none.
        """
        boxes, added_batch = self._batched(gt_boxes)
        targets = self._encode_yxyx(boxes, seeds)
        if added_batch:
            return {name: value[0] for name, value in targets.items()}
        return targets

    def _inside_targets(self, boxes):
        """Labels before sampling and deltas of the inside anchors: ``([B, A_in] int32, [B, A_in, 4])``."""
        labels, matched_gt_index, _ = self._matcher.match_inside(boxes)
        # Deltas = (gt terms - anchor terms) · anchor scales, with the GT terms (centre, log size) computed once
        # per GT box and gathered, and the anchor terms constants: two [A_in, 4] ops instead of ~20.
        heights = boxes[..., 2] - boxes[..., 0]
        widths = boxes[..., 3] - boxes[..., 1]
        gt_terms = tf.stack([boxes[..., 0] + 0.5 * heights, boxes[..., 1] + 0.5 * widths,
                             tf.math.log(heights), tf.math.log(widths)], axis=-1)  # (B, G, 4)
        # One spare row keeps the gather in range when G == 0; unmatched anchors never use what it returns.
        gt_terms = tf.pad(gt_terms, [[0, 0], [0, 1], [0, 0]])
        matched_terms = tf.gather(gt_terms, tf.maximum(matched_gt_index, 0), batch_dims=1)  # (B, A_in, 4)
        deltas = (matched_terms - self._anchor_terms) * self._anchor_scales
        # Unmatched anchors (and padding rows, whose log sizes are -inf) get exact zeros.
        return labels, tf.where((matched_gt_index >= 0)[..., None], deltas, 0.0)

    def _encode_yxyx(self, boxes, seeds=None):
        """``encode`` of validated ``[B, G, 4]`` yxyx network-pixel boxes.

        ``seeds`` (``[B, 2]``) defaults to the encoder's seeding of these boxes.
        """
        if seeds is None:
            seeds = random_seeds(tf.shape(boxes)[0], self._generator) if self.seed is None \
                else content_seeds(self.seed, boxes)
        else:
            seeds = tf.reshape(tf.cast(seeds, tf.int64), [-1, 2])
        # Everything runs on the inside anchors only; outside anchors get -1 and zero deltas.
        labels, deltas = self._inside_targets(boxes)  # (B, A_in), (B, A_in, 4)
        sampled_labels = sample_balanced(labels, seeds, self.samples_per_image, self.positive_fraction)
        return {"rpn_labels": self._matcher.scatter_to_all(sampled_labels, IGNORE),
                "rpn_deltas": self._matcher.scatter_to_all(deltas, 0.0)}

    def _prepare_image(self, image):
        image = tf.convert_to_tensor(image)
        if image.shape.rank is not None and image.shape.rank != 3:
            raise ValueError(f"image must be [height, width, channels], got shape {image.shape}")
        if image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        elif image.shape[-1] is not None and image.shape[-1] != 3:
            raise ValueError(f"image must have 1 or 3 channels, got shape {image.shape}")
        original_size = tf.shape(image)[:2]
        target_size = tf.constant(self.image_size, tf.int32)
        dtype = image.dtype
        # The dtype is kept (uint8 stays uint8: 4× less memory through the pipeline); the model normalizes.
        image = tf.cond(tf.reduce_all(original_size == target_size),
                        lambda: image,
                        lambda: tf.image.resize(image, self.image_size, method="bilinear")
                        if dtype.is_floating else
                        tf.saturate_cast(tf.round(tf.image.resize(image, self.image_size, method="bilinear")), dtype))
        return tf.ensure_shape(image, [*self.image_size, 3]), original_size

    def __call__(self, image, gt_boxes=None):
        """The ``dataset.map`` transform.

        Args:
          image: ``Tensor[H0, W0, 3]`` (or ``[H0, W0, 1]``) of any numeric dtype, or a dict with ``image``,
            ``boxes`` (``[G, 4]`` in ``box_format``) and optionally ``classes`` (``[G]`` ints).
          gt_boxes: ``Tensor[G, 4]`` in ``box_format`` in the original image's coordinates (tuple input).

        Returns:
          ``(image, targets)``: the image resized (bilinear) to ``image_size``, in its input dtype (uint8 stays
          uint8, values unchanged) and a dict with ``rpn_labels`` ``[A]``, ``rpn_deltas`` ``[A, 4]``, ``gt_boxes``
          ``[M, 4]`` yxyx network pixels padded with -1, ``gt_classes`` ``[M]`` padded with -1 (1 when the input
          has no classes) and ``num_boxes`` (scalar int32). Every shape is static, so ``.batch(B)`` works.
        """
        gt_classes = None
        if isinstance(image, dict):
            if gt_boxes is not None:
                raise ValueError("pass either a dict with 'image' and 'boxes' or (image, gt_boxes), not both")
            missing = [key for key in ("image", "boxes") if key not in image]
            if missing:
                raise KeyError(f"the input dict lacks {missing}; it needs 'image' and 'boxes' "
                               f"(and optionally 'classes'), got keys {sorted(image)}")
            gt_classes = image.get("classes")
            gt_boxes = image["boxes"]
            image = image["image"]
        elif gt_boxes is None:
            raise ValueError("RpnTargetEncoder needs (image, gt_boxes) or a dict with 'image' and 'boxes'")

        image, original_size = self._prepare_image(image)
        boxes, added_batch = self._batched(gt_boxes, image_size=original_size)
        if not added_batch:
            raise ValueError(f"gt_boxes of one example must be [G, 4], got shape {boxes.shape}")
        boxes = boxes[0]
        if gt_classes is None:
            gt_classes = tf.fill(tf.shape(boxes)[:1], DEFAULT_CLASS)
        else:
            gt_classes = tf.cast(gt_classes, tf.int32)
            check = tf.debugging.assert_equal(tf.shape(gt_classes), tf.shape(boxes)[:1],
                                              message="'classes' and 'boxes' have different lengths")
            with tf.control_dependencies([check]):
                gt_classes = tf.identity(gt_classes)
        scale = target_size_over(self.image_size, original_size)  # (sy, sx)
        boxes = boxes * tf.concat([scale, scale], axis=0)
        padded_boxes, padded_classes, num_boxes = pad_boxes(boxes, gt_classes, self.max_boxes)
        # Labels come from the unpadded boxes (padding rows change nothing but cost time); the seed comes from
        # the padded ones, so that encoding a batch of padded GT later (e.g. on the accelerator) gives the same
        # sample.
        seeds = None if self.seed is None else content_seeds(self.seed, padded_boxes[None])
        targets = {name: value[0] for name, value in self._encode_yxyx(boxes[None], seeds).items()}
        targets.update(gt_boxes=padded_boxes, gt_classes=padded_classes, num_boxes=num_boxes)
        return image, targets


def target_size_over(image_size, original_size):
    """``(target_h / original_h, target_w / original_w)`` as float32 ``Tensor[2]``."""
    return tf.constant(image_size, tf.float32) / tf.cast(original_size, tf.float32)
