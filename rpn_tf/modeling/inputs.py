"""The models' input boundary: where a batch enters ``RPNModel`` / ``FasterRCNN``, it is read once and checked.

*Read once.* Inside the models ``gt_boxes`` has one meaning: ``[B, M, 4]`` yxyx pixels of the canvas, padded with
-1 rows (what ``ds.map(model.target_encoder)`` gives). Targets in another format arrive as ``boxes`` (KerasHub's
``{"boxes", "classes" | "labels"}``) in the model's ``bounding_box_format`` and are converted here, once
(``canvas_targets``); nothing downstream reads a box format again.

*Checked where the checks hold.* Keras compiles the steps with XLA on a GPU (``jit_compile="auto"``), and under XLA
``tf.debugging`` assertions do nothing. So the checks of a training batch (``check_batch``: NaN / Inf images, NaN /
Inf or inverted boxes, class 0 on a real box, class ids above K) run on the host before the compiled step: eagerly
on arrays and tensors, in the ``tf.data`` pipeline for datasets (a ``map`` after the user's, outside XLA), per batch
for Python generators and ``keras.utils.PyDataset`` — ``fit``, ``evaluate``, ``train_on_batch``, ``test_on_batch``,
``predict`` and ``DistributedTrainer`` all go through ``checked_inputs``. A custom training loop calls
``model.check_batch(batch)`` itself (in its pipeline or before its compiled step).
"""

from __future__ import annotations

import inspect
import warnings

import keras
import numpy as np
import tensorflow as tf

from rpn_tf.data.gt_boxes import to_yxyx_pixels
from rpn_tf.ops import box_ops
from rpn_tf.ops.box_ops import parse_bounding_box_format
from rpn_tf.ops.matching import valid_gt_mask


def split_batch(data):
    """``(images, targets or None, rest)`` of a Keras batch: ``images``, ``(images,)``, ``(images, targets)`` or
    ``(images, targets, sample_weight)``; ``{"image": ...}`` (or ``{"images": ...}``) inputs give their images."""
    if isinstance(data, (tuple, list)):
        images, targets, rest = data[0], data[1] if len(data) > 1 else None, tuple(data[2:])
    else:
        images, targets, rest = data, None, ()
    if isinstance(images, dict):
        images = images.get("image", images.get("images"))
    return images, targets, rest


def canvas_targets(targets, bounding_box_format, image_size):
    """``targets`` with ``gt_boxes`` in yxyx canvas pixels (and ``gt_classes`` int32 when classes are given).

    ``gt_boxes`` are taken as they are (always yxyx canvas pixels); ``boxes`` (with ``classes`` or ``labels``, -1
    for padding rows, as KerasHub pads) are converted from ``bounding_box_format`` (``BOUNDING_BOX_FORMATS``;
    ``rel_*`` in units of the canvas ``image_size``) — the one conversion on the models' side.
    """
    if not isinstance(targets, dict):
        raise ValueError(f"targets must be a dict (padded 'gt_boxes' yxyx canvas pixels, or 'boxes' in the model's "
                         f"bounding_box_format), got {type(targets).__name__}")
    targets = dict(targets)
    classes = targets.get("gt_classes", targets.get("classes", targets.get("labels")))
    if classes is not None:
        targets["gt_classes"] = tf.cast(classes, tf.int32)
    if "gt_boxes" not in targets and "boxes" in targets:
        box_format, normalized = parse_bounding_box_format(bounding_box_format)
        boxes = to_yxyx_pixels(targets.pop("boxes"), box_format, normalized, image_size)
        if classes is not None:  # KerasHub pads with class -1 (its boxes are anything)
            boxes = tf.where((targets["gt_classes"] >= 0)[..., None], boxes, -1.0)
        targets["gt_boxes"] = boxes
    if "gt_boxes" in targets:
        targets["gt_boxes"] = tf.cast(targets["gt_boxes"], tf.float32)
    return targets


def batch_checks(images, targets, num_classes=None, model_name="the model"):
    """The checks of a training batch as ``box_ops.run_checks`` triples (none when nothing can be wrong): finite
    float images; finite, non-inverted ``gt_boxes`` (padding rows of -1 pass); with ``num_classes``, class ids 1…K
    on every real box (0 is background, -1 padding)."""
    checks = []
    images = tf.convert_to_tensor(images)
    if images.dtype.is_floating:
        finite = tf.reduce_all(tf.math.is_finite(images))
        checks.append((finite, lambda: [f"{model_name}: the images contain NaN or Inf values"],
                       "assert_images_finite"))
    if targets is None or "gt_boxes" not in targets:
        return checks
    boxes = targets["gt_boxes"]
    checks.append((tf.reduce_all(tf.math.is_finite(boxes)),
                   lambda: [f"{model_name}: gt_boxes contain NaN or Inf coordinates; boxes must be finite "
                            "[y1, x1, y2, x2] pixels"], "assert_gt_boxes_finite"))
    checks.append(box_ops.inverted_boxes_check(boxes, "gt_boxes"))
    if num_classes is not None:
        if "gt_classes" not in targets:
            raise ValueError(f"{model_name} targets need 'gt_boxes' and 'gt_classes' (or 'boxes' and 'classes' / "
                             f"'labels'); got {sorted(targets)}")
        classes = tf.reshape(targets["gt_classes"], [-1])
        real = tf.reshape(valid_gt_mask(boxes), [-1])
        low = tf.reduce_min(tf.concat([tf.where(real, classes, 1), [1]], 0))
        high = tf.reduce_max(tf.concat([tf.where(real, classes, 0), [0]], 0))
        checks.append((low >= 1, lambda: [
            f"{model_name}: gt_classes hold a class id below 1 for a real box: object classes are "
            f"1..num_classes (0 is background, -1 padding); shift 0-based class ids by + 1. Smallest id:", low],
            "assert_gt_classes_positive"))
        checks.append((high <= num_classes, lambda: [
            f"{model_name}: gt_classes hold a class id above num_classes={num_classes} (ids are 1..num_classes). "
            "Largest id:", high], "assert_gt_classes_at_most_num_classes"))
    return checks


def guarded(value, checks):
    """``value`` (any nest of tensors) once every check holds; else ``InvalidArgumentError`` with the first failing
    check's message (``box_ops.run_checks``)."""
    if not checks:
        return value
    flat = tf.nest.flatten(value)
    token = box_ops.run_checks(tf.constant(0), checks)
    with tf.control_dependencies([token]):
        flat = [tf.identity(t) if isinstance(t, (tf.Tensor, tf.Variable)) or hasattr(t, "dtype") else t
                for t in flat]
    return tf.nest.pack_sequence_as(value, flat)


def _is_array_like(value):
    return isinstance(value, (np.ndarray, tf.Tensor)) or (
        isinstance(value, dict) and all(isinstance(v, (np.ndarray, tf.Tensor, list)) for v in value.values()))


class _CheckedPyDataset(keras.utils.PyDataset):
    """A ``keras.utils.PyDataset`` whose batches go through ``check`` (eagerly, on the host); everything else is the
    wrapped dataset's."""

    def __init__(self, dataset, check):
        super().__init__(workers=getattr(dataset, "workers", 1), use_multiprocessing=False,
                         max_queue_size=getattr(dataset, "max_queue_size", 10))
        self._dataset, self._check = dataset, check

    def __len__(self):
        return len(self._dataset)

    @property
    def num_batches(self):
        return self._dataset.num_batches

    def __getitem__(self, index):
        return self._check(self._dataset[index])

    def on_epoch_begin(self):
        self._dataset.on_epoch_begin()

    def on_epoch_end(self):
        self._dataset.on_epoch_end()

    def __getattr__(self, name):  # anything else a user's dataset defines
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._dataset, name)


def checked_inputs(x, y, check, compiled=False):
    """``(x, y)`` of ``fit`` / ``evaluate`` / ``predict`` with ``check`` (a function of one batch, returning it)
    applied on the host: mapped over a ``tf.data.Dataset`` (after the user's own ops, outside any XLA step), run
    eagerly on arrays and tensors, per batch on Python generators and ``keras.utils.PyDataset`` (one without
    multiprocessing). Other inputs pass unchanged: the checks then run inside the step, where XLA drops them — with
    ``compiled`` (an XLA-compiled model) a warning says so."""
    if isinstance(x, tf.data.Dataset):
        def apply(*element):
            return check(element[0] if len(element) == 1 else element)

        return x.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE), y
    if isinstance(x, keras.utils.PyDataset) and not getattr(x, "use_multiprocessing", False):
        return _CheckedPyDataset(x, check), y
    if inspect.isgenerator(x):
        return (check(batch) for batch in x), y
    if x is not None and _is_array_like(x) and (y is None or _is_array_like(y)):
        checked = check(x if y is None else (x, y))
        return (checked, None) if y is None else (checked[0], checked[1])
    if compiled and x is not None:
        warnings.warn(f"inputs of type {type(x).__name__} are not checked on the host (tf.data.Dataset, arrays, "
                      "generators and PyDataset are): inside an XLA-compiled step the input checks do nothing; map "
                      "your data through model.check_batch", stacklevel=3)
    return x, y
