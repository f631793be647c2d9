"""RPN losses: binary cross-entropy over the sampled anchors and smooth-L1 over the positives.

Shape shorthand: B images, A anchors. Sums are returned unnormalized; ``RPNModel`` divides them by the number of
sampled anchors of the *global* batch (``global_sum``), so that gradients summed over replicas equal the
single-device ones.
"""

from __future__ import annotations

import tensorflow as tf


def smooth_l1(difference, beta):
    """Elementwise smooth-L1 (Huber / beta): ``0.5 x² / beta`` if ``|x| < beta`` else ``|x| - 0.5 beta``."""
    absolute = tf.abs(difference)
    if beta <= 0:
        return absolute
    return tf.where(absolute < beta, 0.5 * tf.square(absolute) / beta, absolute - 0.5 * beta)


def rpn_loss_sums(rpn_labels, rpn_deltas, objectness_logits, box_deltas, smooth_l1_beta=1.0 / 9.0):
    """Unnormalized RPN losses of a batch.

    Args:
      rpn_labels: int ``[B, A]`` in {1, 0, -1} (sampled).
      rpn_deltas: float ``[B, A, 4]`` targets.
      objectness_logits: ``[B, A]``; box_deltas: ``[B, A, 4]`` predictions.
      smooth_l1_beta: smooth-L1 transition point (1/9; 0 gives plain L1).

    Returns:
      ``(objectness_sum, box_sum, num_sampled, num_correct)``, float32 scalars: binary cross-entropy summed over
      sampled anchors (label ≥ 0), smooth-L1 summed over positives and coordinates, the number of sampled anchors
      and of sampled anchors whose predicted class (logit > 0) matches the label.
    """
    labels = tf.cast(rpn_labels, tf.int32)
    logits = tf.cast(objectness_logits, tf.float32)
    sampled = tf.cast(labels >= 0, tf.float32)
    positive = tf.cast(labels == 1, tf.float32)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=positive, logits=logits)
    objectness_sum = tf.reduce_sum(cross_entropy * sampled)
    box_error = smooth_l1(tf.cast(box_deltas, tf.float32) - tf.cast(rpn_deltas, tf.float32), smooth_l1_beta)
    box_sum = tf.reduce_sum(tf.reduce_sum(box_error, axis=-1) * positive)
    correct = tf.cast(tf.equal(tf.cast(logits > 0.0, tf.float32), positive), tf.float32) * sampled
    return objectness_sum, box_sum, tf.reduce_sum(sampled), tf.reduce_sum(correct)


def global_sum(value):
    """Sum of ``value`` over the replicas of the current ``tf.distribute`` step (itself on one device)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
