"""``top_k_padded``: the k largest entries per row with a static output size, padded when a row has fewer than k.

Shape shorthand: B rows, n entries per row (static or not), k the output size.
"""

from __future__ import annotations

import tensorflow as tf


def top_k_padded(values, k, fill_value):
    """The ``k`` largest entries of each row of ``values`` ``[B, n]``, sorted, in a static ``[B, k]`` whatever ``n``.

    Args:
      values: ``Tensor[B, n]`` (float or int); ``n`` may be unknown until run time.
      k: Python int, the output size.
      fill_value: the value of the missing slots when ``n < k`` (rank it below every real entry, e.g. -1 for scores
        that are ≥ 0, so that it never competes with them).

    Returns:
      ``(top_values [B, k], indices int32 [B, k], present bool [B, k])``: the missing slots (``n < k``) hold
      ``fill_value``, index 0 and ``present`` False.
    """
    values = tf.convert_to_tensor(values)
    k = int(k)
    n = values.shape[-1]
    if n is not None and n >= k:
        top, index = tf.math.top_k(values, k=k)
        return top, index, tf.ones(tf.shape(index), tf.bool)
    num_real = tf.shape(values)[-1]
    filler = tf.fill(tf.stack([tf.shape(values)[0], k]), tf.constant(fill_value, values.dtype))
    top, index = tf.math.top_k(tf.concat([values, filler], axis=-1), k=k)  # real entries first among equals
    present = index < num_real
    return tf.where(present, top, tf.constant(fill_value, values.dtype)), tf.where(present, index, 0), present
