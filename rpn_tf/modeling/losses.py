"""The losses: the RPN's (binary cross-entropy over the sampled anchors, smooth-L1 over the positives) and the second
stage's (``roi_losses``: softmax cross-entropy over the sampled ROIs, class-specific smooth-L1 over the positives).

Shape shorthand: B images, A anchors, R sampled ROIs, K object classes. Sums are returned unnormalized; ``RPNModel`` divides them by the number of
sampled anchors of the *global* batch (``global_sum``), so that gradients summed over replicas equal the
single-device ones.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from rpn_tf.ops.box_ops import iou_matrix
from rpn_tf.ops.sampling import random_seeds, sample_hard_negatives, seeded_generator


def smooth_l1(difference, beta):
    """Elementwise smooth-L1 (Huber / beta): ``0.5 x² / beta`` if ``|x| < beta`` else ``|x| - 0.5 beta``."""
    absolute = tf.abs(difference)
    if beta <= 0:
        return absolute
    return tf.where(absolute < beta, 0.5 * tf.square(absolute) / beta, absolute - 0.5 * beta)


OBJECTNESS_LOSSES = ("bce", "focal")
NEGATIVE_SAMPLING = ("random", "hard")
OBJECTNESS_TARGETS = ("binary", "iou")


def decoded_iou(predicted_deltas, target_deltas, anchors, box_coder):
    """IoU ``[...]`` between each anchor's predicted box and its target box (both decoded from deltas
    ``[..., 4]`` with ``box_coder`` on ``anchors`` ``[..., 4]``), without gradient: the soft objectness target of
    IoU-aware ranking (the score learns how well the anchor's own box fits its object)."""
    predicted = box_coder.decode(tf.stop_gradient(tf.cast(predicted_deltas, tf.float32)), anchors)
    target = box_coder.decode(tf.cast(target_deltas, tf.float32), anchors)
    # each box against its own target: a 1 x 1 IoU matrix per anchor
    return tf.stop_gradient(iou_matrix(predicted[..., None, :], target[..., None, :])[..., 0, 0])


def objectness_losses(positive, logits, objectness_loss="bce", focal_gamma=2.0, focal_alpha=0.25):
    """Per-anchor objectness loss: binary cross-entropy, or the focal loss of RetinaNet (Lin et al. 2017),
    ``α_t (1 − p_t)^γ · BCE`` (``focal_alpha=None``: no α weighting; γ = 0 and α = None give BCE exactly)."""
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=positive, logits=logits)
    if objectness_loss == "bce":
        return cross_entropy
    probability = tf.sigmoid(logits)
    p_t = probability * positive + (1.0 - probability) * (1.0 - positive)
    loss = tf.pow(1.0 - p_t, focal_gamma) * cross_entropy
    if focal_alpha is not None:
        loss *= focal_alpha * positive + (1.0 - focal_alpha) * (1.0 - positive)
    return loss


def rpn_loss_sums(rpn_labels, rpn_deltas, objectness_logits, box_deltas, smooth_l1_beta=1.0 / 9.0,
                  objectness_loss="bce", focal_gamma=2.0, focal_alpha=0.25, positive_targets=None):
    """Unnormalized RPN losses of a batch.

    Args:
      rpn_labels: int ``[B, A]`` in {1, 0, -1} (sampled, or every labeled anchor for the focal loss).
      rpn_deltas: float ``[B, A, 4]`` targets.
      objectness_logits: ``[B, A]``; box_deltas: ``[B, A, 4]`` predictions.
      smooth_l1_beta: smooth-L1 transition point (1/9; 0 gives plain L1).
      objectness_loss, focal_gamma, focal_alpha: see ``objectness_losses``.
      positive_targets: optional ``[B, A]`` soft objectness targets of the positives (e.g. ``decoded_iou``);
        default 1 (the article's binary labels). Negatives' target stays 0.

    Returns:
      ``(objectness_sum, box_sum, num_sampled, num_correct, num_positive)``, float32 scalars: the objectness loss
      summed over labeled anchors (label ≥ 0), smooth-L1 summed over positives and coordinates, the number of
      labeled anchors, of labeled anchors whose predicted class (logit > 0) matches the label, and of positives.
    """
    labels = tf.cast(rpn_labels, tf.int32)
    logits = tf.cast(objectness_logits, tf.float32)
    sampled = tf.cast(labels >= 0, tf.float32)
    positive = tf.cast(labels == 1, tf.float32)
    objectness_target = positive if positive_targets is None else \
        positive * tf.cast(positive_targets, tf.float32)
    per_anchor = objectness_losses(objectness_target, logits, objectness_loss, focal_gamma, focal_alpha)
    objectness_sum = tf.reduce_sum(per_anchor * sampled)
    box_error = smooth_l1(tf.cast(box_deltas, tf.float32) - tf.cast(rpn_deltas, tf.float32), smooth_l1_beta)
    box_sum = tf.reduce_sum(tf.reduce_sum(box_error, axis=-1) * positive)
    correct = tf.cast(tf.equal(tf.cast(logits > 0.0, tf.float32), positive), tf.float32) * sampled
    return objectness_sum, box_sum, tf.reduce_sum(sampled), tf.reduce_sum(correct), tf.reduce_sum(positive)


def roi_losses(class_logits, box_deltas, roi_classes, roi_deltas, smooth_l1_beta=1.0 / 9.0):
    """Fast R-CNN losses over the sampled ROIs (torchvision's ``fastrcnn_loss``), unnormalized.

    Args:
      class_logits: ``[B, R, K + 1]``; box_deltas: ``[B, R, K, 4]`` (``BoxHead``'s outputs).
      roi_classes: int ``[B, R]``: GT class of each sampled ROI (1…K), 0 background, -1 padding (``RoiSampler``).
      roi_deltas: ``[B, R, 4]`` regression targets of the positives.
      smooth_l1_beta: smooth-L1 transition point (1/9, torchvision's).


    Classification: softmax cross-entropy over the ``K + 1`` classes, averaged over the sampled ROIs (padding,
    class -1, left out). Box: smooth-L1 (``smooth_l1_beta``) between the deltas predicted *for the ROI's GT class*
    and the targets, summed over the positive ROIs and divided by the number of sampled ROIs.

    Returns:
      ``(classification_sum, box_sum, num_sampled, num_correct)`` float32 scalars: the losses are
      ``sum / max(num_sampled, 1)`` (a batch without any sampled ROI gives 0, not NaN).
    """
    roi_classes = tf.cast(roi_classes, tf.int32)
    sampled = roi_classes >= 0
    weights = tf.cast(sampled, tf.float32)
    safe_classes = tf.maximum(roi_classes, 0)
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_classes, logits=class_logits)
    classification_sum = tf.reduce_sum(cross_entropy * weights)
    positive = roi_classes > 0
    predicted = tf.gather(box_deltas, tf.maximum(roi_classes - 1, 0), batch_dims=2)  # (B, R, 4)
    box_error = smooth_l1(predicted - tf.cast(roi_deltas, tf.float32), float(smooth_l1_beta))
    box_sum = tf.reduce_sum(tf.reduce_sum(box_error, axis=-1) * tf.cast(positive, tf.float32))
    correct = tf.cast(tf.argmax(class_logits, axis=-1, output_type=tf.int32) == roi_classes, tf.float32) * weights
    return classification_sum, box_sum, tf.reduce_sum(weights), tf.reduce_sum(correct)


def global_sum(value):
    """Sum of ``value`` over the replicas of the current ``tf.distribute`` step (itself on one device)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


@keras.saving.register_keras_serializable(package="rpn_tf")
class RpnLoss:
    """The RPN's training loss, configured once: ``(objectness + box_loss_weight · box) / normalizer``.

    The normalizer is the number of sampled anchors (BCE) or of positives (focal) of the *global* batch, so that
    gradients summed over replicas equal the single-device ones. With ``negative_sampling="hard"`` the sample is
    drawn here from every labeled anchor (``sample_hard_negatives``).

    ``objectness_target="iou"``: the positives' objectness target is the IoU of their decoded predicted box with
    their GT box (``decoded_iou``, passed by the model as ``positive_targets``) instead of 1 — IoU-aware ranking
    (as IoU-Net / VarifocalNet score boxes): a shifted box of an object scores lower than a well-fitting one.

    ``__call__(rpn_labels [B, A], rpn_deltas [B, A, 4], objectness_logits [B, A], box_deltas [B, A, 4],
    positive_targets=None, seeds=None)`` (``seeds``: int64 ``[B, 2]`` for the positives' draw of hard mining; default
    this loss's generator, seeded from the global seed) →
    ``(loss, (objectness_sum, box_sum, num_sampled, num_correct, count))`` with ``count`` this replica's share of
    the normalizer (so that ``Σ sums / Σ count`` over replicas and steps is the logged loss).
    """

    def __init__(self, objectness_loss="bce", focal_gamma=2.0, focal_alpha=0.25, smooth_l1_beta=1.0 / 9.0,
                 box_loss_weight=1.0, negative_sampling="random", samples_per_image=256, positive_fraction=0.5,
                 objectness_target="binary"):
        if objectness_target not in OBJECTNESS_TARGETS:
            raise ValueError(f"objectness_target must be one of {OBJECTNESS_TARGETS}, got {objectness_target!r}")
        self.objectness_target = objectness_target
        if objectness_loss not in OBJECTNESS_LOSSES:
            raise ValueError(f"objectness_loss must be one of {OBJECTNESS_LOSSES}, got {objectness_loss!r}")
        if negative_sampling not in NEGATIVE_SAMPLING:
            raise ValueError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {negative_sampling!r}")
        if not focal_gamma >= 0 or (focal_alpha is not None and not 0 <= focal_alpha <= 1):
            raise ValueError(f"need focal_gamma >= 0 and focal_alpha in [0, 1] or None, got {focal_gamma}, "
                             f"{focal_alpha}")
        self.objectness_loss, self.negative_sampling = objectness_loss, negative_sampling
        self.focal_gamma, self.focal_alpha = float(focal_gamma), focal_alpha
        self.smooth_l1_beta, self.box_loss_weight = float(smooth_l1_beta), float(box_loss_weight)
        self.samples_per_image, self.positive_fraction = samples_per_image, positive_fraction
        self._generator = seeded_generator() if negative_sampling == "hard" else None

    def __call__(self, rpn_labels, rpn_deltas, objectness_logits, box_deltas, positive_targets=None, seeds=None):
        labels = rpn_labels
        if self.negative_sampling == "hard":
            if seeds is None:
                seeds = random_seeds(tf.shape(labels)[0], self._generator)
            labels = sample_hard_negatives(labels, objectness_logits, seeds, self.samples_per_image,
                                           self.positive_fraction)
        objectness_sum, box_sum, num_sampled, num_correct, num_positive = rpn_loss_sums(
            labels, rpn_deltas, objectness_logits, box_deltas, self.smooth_l1_beta, self.objectness_loss,
            self.focal_gamma, self.focal_alpha, positive_targets)
        count = num_positive if self.objectness_loss == "focal" else num_sampled
        loss = (objectness_sum + self.box_loss_weight * box_sum) / tf.maximum(global_sum(count), 1.0)
        return loss, (objectness_sum, box_sum, num_sampled, num_correct, count)

    def get_config(self):
        return {"objectness_loss": self.objectness_loss, "focal_gamma": self.focal_gamma,
                "focal_alpha": self.focal_alpha, "smooth_l1_beta": self.smooth_l1_beta,
                "box_loss_weight": self.box_loss_weight, "negative_sampling": self.negative_sampling,
                "samples_per_image": self.samples_per_image, "positive_fraction": self.positive_fraction,
                "objectness_target": self.objectness_target}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
