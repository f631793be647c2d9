"""Balanced positive / negative sampling with reproducible, per-image randomness.

Shape shorthand: B images, A anchors (or candidates), G ground-truth boxes per image.
"""

from __future__ import annotations

import random

import tensorflow as tf

_HASH_MODULUS = 2_147_483_647  # 2**31 - 1, a prime
_INT32_MAX = 2_147_483_647


def content_seeds(base_seed, values):
    """Per-image stateless seeds derived from ``base_seed`` and the bits of ``values``.

    The same image content always gets the same seed, so a seeded pipeline samples identically on every pass and
    in every execution mode, whatever order ``tf.data`` processes images in.

    Args:
      base_seed: Python int.
      values: float32 ``Tensor[B, ...]`` (typically the padded GT boxes).

    Returns:
      int64 ``Tensor[B, 2]`` usable as ``seed`` of ``tf.random.stateless_*`` ops.
    """
    values = tf.convert_to_tensor(values, tf.float32)
    batch_size = tf.shape(values)[0]
    bits = tf.reshape(tf.bitcast(values, tf.int32), tf.stack([batch_size, -1]))
    bits = tf.cast(bits, tf.int64) & 0xFFFFFFFF  # [0, 2**32)
    position = tf.range(1, tf.shape(bits)[1] + 1, dtype=tf.int64)
    weights = (position * 2_654_435_761) % _HASH_MODULUS  # < 2**31, so bits * weights < 2**63
    content_hash = tf.reduce_sum((bits * weights[None, :]) % _HASH_MODULUS, axis=1) % _HASH_MODULUS
    base = tf.fill(tf.shape(content_hash), tf.constant(int(base_seed), tf.int64))
    return tf.stack([base, content_hash], axis=1)


def seeded_generator():
    """A ``tf.random.Generator`` for unseeded sampling, seeded from Python's ``random``: new draws on every call and
    every pass over a dataset, yet the same sequence in a program seeded with ``keras.utils.set_random_seed`` (which
    seeds Python's ``random``), so that seeded runs repeat. (Sampling inside a parallel ``dataset.map`` draws in the
    order the elements are processed; ``TargetConfig.seed`` makes each element's sample a function of its content.)"""
    return tf.random.Generator.from_seed(random.randint(0, 2 ** 31 - 2))


def random_seeds(batch_size, generator=None):
    """Fresh per-image seeds (``Tensor[B, 2]`` int64) for unseeded sampling.

    ``generator``: a ``tf.random.Generator``. Its state lives in a variable, so every call — and every pass over a
    ``tf.data`` pipeline — gets new seeds, even when a global seed is set (``keras.utils.set_random_seed``), which
    would make a plain ``tf.random.uniform`` inside ``dataset.map`` repeat the same values on every epoch.
    """
    shape = tf.stack([batch_size, 2])
    if generator is None:
        return tf.random.uniform(shape, maxval=_INT32_MAX, dtype=tf.int64)
    return generator.uniform(shape, maxval=_INT32_MAX, dtype=tf.int64)


def _unique_random_keys(seeds, num_candidates):
    """Distinct non-negative int32 keys per candidate: a random part times ``num_candidates`` plus the index.

    Keys never tie, so a top-k threshold selects exactly k candidates. ``num_candidates``: int or scalar tensor.
    """
    key_levels = tf.maximum(_INT32_MAX // tf.maximum(num_candidates, 1), 1)

    def draw(seed):
        return tf.random.stateless_uniform(tf.reshape(num_candidates, [1]), seed=seed, minval=0,
                                           maxval=key_levels, dtype=tf.int32)

    if seeds.shape[0] == 1:  # The per-image path of tf.data: no loop needed.
        random_part = draw(seeds[0])[None, :]
    else:
        static = num_candidates if isinstance(num_candidates, int) else None
        random_part = tf.map_fn(draw, seeds, fn_output_signature=tf.TensorSpec([static], tf.int32))
    return random_part * num_candidates + tf.range(num_candidates, dtype=tf.int32)[None, :]


def sample_balanced(labels, seeds, num_samples=256, positive_fraction=0.5):
    """Keeps a random subset of at most ``num_samples`` labelled candidates per image.

    At most ``floor(num_samples * positive_fraction)`` positives are kept, chosen uniformly at random; negatives
    fill the rest up to ``num_samples`` (fewer if there are not enough); every other candidate becomes -1.

    Args:
      labels: int32 ``Tensor[B, A]`` in {1, 0, -1}; A may be dynamic (then it must be > 0 at run time).
      seeds: int ``Tensor[B, 2]`` (``content_seeds`` or ``random_seeds``).
      num_samples: samples per image.
      positive_fraction: largest share of positives.

    Returns:
      int32 ``Tensor[B, A]`` in {1, 0, -1}.
    """
    num_candidates = labels.shape[-1]
    if num_candidates == 0:
        return labels
    if num_candidates is None:
        num_candidates = tf.shape(labels)[-1]
    keys = _unique_random_keys(seeds, num_candidates)  # (B, A)
    is_positive = labels == 1
    is_negative = labels == 0

    max_positives = int(num_samples * positive_fraction)
    if max_positives > 0:
        positive_keys = tf.where(is_positive, keys, -1)
        # The k-th largest key; -1 when there are at most k positives, which then are all kept (the usual case:
        # the top-k is skipped).
        k = tf.minimum(max_positives, num_candidates)
        few = tf.reduce_all(tf.reduce_sum(tf.cast(is_positive, tf.int32), axis=1) <= k)
        positive_threshold = tf.cond(few, lambda: tf.fill(tf.stack([tf.shape(labels)[0], 1]), -1),
                                     lambda: tf.math.top_k(positive_keys, k=k, sorted=True).values[:, -1:])
        keep_positive = is_positive & (keys >= positive_threshold)
    else:
        keep_positive = tf.zeros_like(is_positive)
    num_positive_kept = tf.reduce_sum(tf.cast(keep_positive, tf.int32), axis=1)  # (B,)

    num_negative_wanted = num_samples - num_positive_kept  # (B,)
    top_count = tf.minimum(num_samples, num_candidates)
    negative_keys = tf.where(is_negative, keys, -1)
    top_negative_keys = tf.math.top_k(negative_keys, k=top_count, sorted=True).values  # (B, top_count)
    position = tf.clip_by_value(num_negative_wanted - 1, 0, top_count - 1)
    negative_threshold = tf.gather(top_negative_keys, position[:, None], batch_dims=1)  # (B, 1)
    negative_threshold = tf.where(num_negative_wanted[:, None] > 0, negative_threshold, _INT32_MAX)
    keep_negative = is_negative & (keys >= negative_threshold)

    return tf.where(keep_positive, 1, tf.where(keep_negative, 0, -1))


def sample_hard_negatives(labels, scores, seeds, num_samples=256, positive_fraction=0.5):
    """Online hard-negative mining (OHEM-style): positives at random, negatives by highest score.

    At most ``floor(num_samples · positive_fraction)`` positives are kept at random (as ``sample_balanced``); the
    rest of the ``num_samples`` are the negatives the model scores highest (ties at the threshold may add a few).

    Args:
      labels: int32 ``Tensor[B, A]`` in {1, 0, -1}, before sampling.
      scores: float ``Tensor[B, A]`` (e.g. objectness logits; not differentiated through).
      seeds: int ``Tensor[B, 2]`` for the positives' draw.

    Returns:
      int32 ``Tensor[B, A]`` in {1, 0, -1}.
    """
    positives = sample_balanced(tf.where(labels == 1, 1, -1), seeds, num_samples, positive_fraction) == 1
    num_negative_wanted = num_samples - tf.reduce_sum(tf.cast(positives, tf.int32), axis=1)  # (B,)
    negative_scores = tf.where(labels == 0, tf.stop_gradient(tf.cast(scores, tf.float32)), -float("inf"))
    k = min(num_samples, labels.shape[-1]) if labels.shape[-1] is not None else num_samples
    top_scores = tf.math.top_k(negative_scores, k=k).values  # (B, k)
    position = tf.clip_by_value(num_negative_wanted - 1, 0, k - 1)
    threshold = tf.gather(top_scores, position[:, None], batch_dims=1)  # (B, 1)
    threshold = tf.where(num_negative_wanted[:, None] > 0, threshold, float("inf"))
    negatives = (labels == 0) & (negative_scores >= threshold) & tf.math.is_finite(negative_scores)
    return tf.where(positives, 1, tf.where(negatives, 0, -1))
