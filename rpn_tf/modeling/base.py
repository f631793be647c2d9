"""What ``RPNModel`` and ``FasterRCNN`` share as Keras models: the input boundary of ``fit`` / ``evaluate`` /
``predict`` (``modeling/inputs.py``: targets read once, checks on the host so that they hold under XLA; a corrupt
TFRecord file named in a ``DataLossError``: ``data.records.named_data_errors``), ``predict``
on raw images of any size, boxes mapped back to each image's own pixels, and per-step random seeds that derive from
the model's seed or, without one, from the global seed (``keras.utils.set_random_seed``).

Shape shorthand: B images, N boxes per image.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from rpn_tf.data.records import named_data_errors
from rpn_tf.modeling.backbones import check_predict_input, check_raw_images
from rpn_tf.modeling.inputs import batch_checks, canvas_targets, checked_inputs, guarded, split_batch
from rpn_tf.ops.box_ops import clip_boxes

# Streams of one model's seed generator: each random choice of a step draws its own seeds.
RPN_SAMPLING_STREAM, ROI_SAMPLING_STREAM, HARD_MINING_STREAM = 0, 1, 2


def boxes_in_original_pixels(boxes, num_boxes, image_scale, original_size):
    """Canvas-pixel boxes ``[B, N, 4]`` → each image's own pixels (divided by ``image_scale`` ``[B, 2]``, clipped
    to ``original_size`` ``[B, 2]``), zeros past ``num_boxes`` ``[B]``."""
    boxes = boxes / tf.concat([image_scale, image_scale], axis=1)[:, None, :]
    boxes = clip_boxes(boxes, original_size)
    valid = tf.range(tf.shape(boxes)[1])[None, :] < tf.cast(num_boxes, tf.int32)[:, None]
    return tf.where(valid[..., None], boxes, 0.0)


def replica_id():
    """This replica's id in a ``tf.distribute`` step (0 outside one)."""
    context = tf.distribute.get_replica_context()
    return tf.cast(context.replica_id_in_sync_group, tf.int32) if context is not None else tf.constant(0)


def replicas_in_sync():
    context = tf.distribute.get_replica_context()
    return context.num_replicas_in_sync if context is not None else 1


class DetectionModel(keras.Model):
    """Base of ``RPNModel`` and ``FasterRCNN`` (not used alone).

    Subclasses define ``image_size``, ``bounding_box_format``, ``to_canvas(images)``,
    ``outputs_in_original_pixels(canvas, image_scale, valid_size, original_size)`` and, for classes checks,
    ``checked_num_classes``.
    """

    checked_num_classes = None  # FasterRCNN: its K (class ids of real boxes must be 1…K)

    # -- seeds ---------------------------------------------------------------------------------------------------
    def _make_seed_generator(self, seed, name):
        """A ``keras.random.SeedGenerator``: from ``seed``, or — ``None`` — from the global seed (Python's ``random``,
        which ``keras.utils.set_random_seed`` seeds), so that a seeded program repeats."""
        return keras.random.SeedGenerator(seed, name=name)

    def step_seeds(self, batch, stream):
        """int64 ``[B, 2]`` stateless seeds for one random choice of a step (``stream``: RPN anchor sampling, ROI
        sampling, hard mining): one draw of the model's ``SeedGenerator`` per step, with the stream and the
        replica's id folded in, so that the choices and the replicas of a ``tf.distribute`` step differ."""
        base = tf.cast(self.seed_generator.next(), tf.int32) + tf.stack([stream * 7919, replica_id()])
        return tf.cast(tf.random.stateless_uniform([batch, 2], base, maxval=2 ** 31 - 1, dtype=tf.int32), tf.int64)

    # -- the input boundary --------------------------------------------------------------------------------------
    def check_batch(self, data):
        """A training batch ``(images, targets[, sample_weight])`` read and checked: ``targets`` with ``gt_boxes``
        in yxyx canvas pixels (``boxes`` converted from ``bounding_box_format``), and an ``InvalidArgumentError``
        naming the problem for NaN / Inf images or boxes, inverted boxes and (detector) class ids outside 1…K on real
        boxes. ``fit`` / ``evaluate`` / ``train_on_batch`` / ``test_on_batch`` call it on the host, before the
        (possibly XLA-compiled) step; a custom loop calls it in its pipeline (``ds.map(model.check_batch)``)."""
        images, targets, rest = split_batch(data)
        if targets is None:
            raise ValueError(f"{type(self).__name__} trains on (images, targets); got no targets")
        targets = canvas_targets(targets, self.bounding_box_format, self.image_size)
        checks = batch_checks(images, targets, self.checked_num_classes, type(self).__name__)
        return guarded((data[0], targets, *rest), checks)

    def check_images(self, data):
        """Raw images for ``predict`` (``[B, H, W, 3]``, or ``(images, ...)`` / ``{"image": ...}``) checked on the
        host: a batch of RGB images, not empty, finite."""
        images, _, _ = split_batch(data)
        checked = check_raw_images(images)
        if isinstance(data, (tuple, list)):
            return (checked, *data[1:])
        return {**data, "image": checked} if isinstance(data, dict) else checked

    def _unpack(self, data):
        """``(images, targets)`` inside a step: ``targets`` read by ``canvas_targets`` (a no-op on a batch that
        ``check_batch`` already read), and — in a step not compiled with XLA — checked again (the same checks: they
        cover inputs the host could not check, e.g. a distributed dataset; under XLA they would do nothing)."""
        images, targets, _ = split_batch(data)
        if targets is None:
            raise ValueError(f"{type(self).__name__} expects (images, targets) with targets a dict holding padded "
                             "'gt_boxes' (yxyx canvas pixels, as ds.map(model.target_encoder) gives) or 'boxes' "
                             "in the model's bounding_box_format")
        targets = canvas_targets(targets, self.bounding_box_format, self.image_size)
        if not self.jit_compile:
            images, targets = guarded((images, targets), batch_checks(images, targets, self.checked_num_classes,
                                                                      type(self).__name__))
        return images, targets

    def fit(self, x=None, y=None, *args, shuffle=None, **kwargs):
        """``keras.Model.fit`` with the batches checked on the host (``check_batch``; also ``validation_data``).
        A ``tf.data.Dataset`` is not reshuffled by Keras anyway, so ``shuffle`` defaults to ``False`` for one
        (Keras's default ``True`` only prints a warning on every call)."""
        if shuffle is None:
            shuffle = not isinstance(x, tf.data.Dataset)
        compiled = bool(self.jit_compile)
        x, y = checked_inputs(x, y, self.check_batch, compiled)
        validation = kwargs.get("validation_data")
        if validation is not None:
            if isinstance(validation, (tuple, list)):
                kwargs["validation_data"] = tuple(checked_inputs(validation[0], validation[1], self.check_batch,
                                                                 compiled)) + tuple(validation[2:])
            else:
                kwargs["validation_data"] = checked_inputs(validation, None, self.check_batch, compiled)[0]
        with named_data_errors():
            return super().fit(x, y, *args, shuffle=shuffle, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """``keras.Model.evaluate`` with the batches checked on the host (``check_batch``)."""
        if not kwargs.get("_use_cached_eval_dataset"):  # fit's validation: checked by fit already
            x, y = checked_inputs(x, y, self.check_batch, bool(self.jit_compile))
        with named_data_errors():
            return super().evaluate(x, y, *args, **kwargs)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        x, y = checked_inputs(x, y, self.check_batch, bool(self.jit_compile))
        return super().train_on_batch(x, y, *args, **kwargs)

    def test_on_batch(self, x, y=None, *args, **kwargs):
        x, y = checked_inputs(x, y, self.check_batch, bool(self.jit_compile))
        return super().test_on_batch(x, y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        """``keras.Model.predict`` on raw images ``[B, H0, W0, 3]`` of any size (``predict_step``): results in each
        image's own pixels. A wrong rank or channel count is named before anything runs (Keras relaxes shapes
        between calls), empty and NaN / Inf images on the host (``check_images``)."""
        check_predict_input(x)
        x, _ = checked_inputs(x, None, self.check_images, bool(self.jit_compile))
        with named_data_errors():
            return super().predict(x, *args, **kwargs)

    def predict_on_batch(self, x):
        check_predict_input(x)
        x, _ = checked_inputs(x, None, self.check_images, bool(self.jit_compile))
        return super().predict_on_batch(x)

    def predict_step(self, data):
        """Raw images ``[B, H0, W0, 3]`` of any size (or ``{"image": ...}``) → outputs in their own pixels."""
        images, _, _ = split_batch(data)
        return self.outputs_in_original_pixels(*self.to_canvas(images))
