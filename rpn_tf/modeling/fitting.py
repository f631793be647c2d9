"""One training entry point for ``RPNModel`` and ``FasterRCNN``: ``train_model``.

It compiles the model (optimizer and learning-rate schedule by name, or an optimizer of your own) and trains it with
``model.fit`` — crash-safe resume, atomic checkpoints and TensorBoard logs when given an ``out_dir`` — or, under a
multi-worker or TPU strategy (where Keras 3's ``fit`` fails: keras-team/keras#20585), with the TensorFlow-native
``DistributedTrainer`` loop. ``rpn-tf train``, the deepforest recipes (``rpn_tf.tools.train_deepforest``, the demo)
and the distributed loop all go through it; it depends on no CLI module.

Use::

    model = rpn_tf.RPNModel(...)                       # built in strategy.scope() when a strategy is given
    history = train_model(model, ds.map(model.target_encoder).batch(8), epochs=10, learning_rate=1e-3,
                          lr_schedule="cosine", out_dir="run")
"""

from __future__ import annotations

import math
import os
import sys
import tempfile

import keras
import tensorflow as tf

OPTIMIZERS = ("adam", "sgd", "adamw")
LR_SCHEDULES = ("constant", "cosine", "step")
STEP_DECAY_AT = 0.75  # the article: 60k iterations at 0.001, then 20k at 0.0001


def make_optimizer(name="adam", learning_rate=1e-3, schedule="constant", total_steps=0):
    """A Keras optimizer by name (``"adam"``, ``"sgd"`` with momentum 0.9 — the article's —, ``"adamw"`` with weight
    decay 1e-4) with a learning-rate ``schedule`` over ``total_steps``: ``"constant"``, ``"cosine"`` (decay to 0)
    or ``"step"`` (× 0.1 after 75 % of the steps, the article's 60k + 20k iterations)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, max(total_steps, 1))
    elif schedule == "step":
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            [max(int(total_steps * STEP_DECAY_AT), 1)], [learning_rate, learning_rate * 0.1])
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=1e-4)
    return keras.optimizers.Adam(learning_rate)


def needs_native_loop(strategy) -> bool:
    """Whether ``strategy`` trains through ``DistributedTrainer`` rather than ``model.fit`` (multi-worker, TPU)."""
    return isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.TPUStrategy))


def _steps_of(dataset):
    cardinality = int(dataset.cardinality())
    return cardinality if cardinality >= 0 else None


def train_model(model, dataset, epochs, *, optimizer="adam", learning_rate=1e-3, lr_schedule="constant",
                steps_per_epoch=None, strategy=None, out_dir=None, validation_data=None, validation_steps=None,
                jit_compile="auto", callbacks=(), verbose=2):
    """Compiles ``model`` and trains it for ``epochs``; returns the history ``{metric: [value per epoch]}``.

    Args:
      model: an ``RPNModel`` or ``FasterRCNN`` (built inside ``strategy.scope()`` when ``strategy`` is given).
      dataset: batched ``(images, targets)`` (``ds.map(model.target_encoder).batch(...)``); under a multi-worker or
        TPU strategy batched with the *global* batch size and ``drop_remainder=True``.
      epochs: the last epoch to reach (a resumed run continues up to it; 0 trains nothing).
      optimizer: a name for ``make_optimizer`` or a ``keras.optimizers.Optimizer`` (then ``learning_rate`` and
        ``lr_schedule`` are its own).
      learning_rate / lr_schedule: see ``make_optimizer``; the schedule spans ``epochs × steps_per_epoch``.
      steps_per_epoch: default the dataset's cardinality (needed for a decaying schedule and the native loop);
        an infinite (``repeat()``-ed) dataset is read this many batches per epoch.
      strategy: a ``tf.distribute`` strategy (default: the current one). ``MultiWorkerMirroredStrategy`` and
        ``TPUStrategy`` train through ``DistributedTrainer``, any other through ``model.fit``.
      out_dir: optional folder for resumable training: ``model.fit`` keeps a crash-safe backup of every epoch
        (``backup/``, restored on the next call: an interrupted run restarts from its last finished epoch), the
        checkpoint ``checkpoint.keras`` (written atomically; with ``validation_data`` the best epoch by validation
        recall@N for an RPN, the lowest ``val_loss`` for a detector; else the last) and TensorBoard ``logs/``; the
        native loop keeps ``checkpoints/`` (``tf.train.CheckpointManager``) and the same best ``checkpoint.keras``.
      validation_data / validation_steps: evaluated after every epoch (``val_*`` in the history).
      jit_compile: ``compile``'s: ``"auto"`` (default: Keras compiles the steps with XLA where it can, e.g. on a
        GPU), ``True`` or ``False`` (``model.fit`` only; the native loop runs without, TPU steps are compiled
        anyway).
      callbacks: more Keras callbacks (``model.fit`` only).
      verbose: ``model.fit``'s verbosity (0 quiet; the native loop prints one line per epoch unless 0).
    """
    strategy = strategy or tf.distribute.get_strategy()
    loop = needs_native_loop(strategy)
    if jit_compile not in (True, False, "auto"):
        raise ValueError(f"jit_compile must be True, False or 'auto', got {jit_compile!r}")
    if loop and jit_compile is True:
        raise ValueError("jit_compile is not supported with a multi-worker or TPU strategy (the native loop; TPU "
                         "steps are always compiled with XLA)")
    if loop and callbacks:
        raise ValueError("Keras callbacks run under model.fit only, not the native multi-worker / TPU loop")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    if steps_per_epoch is None:
        steps_per_epoch = _steps_of(dataset)
    decaying = not isinstance(optimizer, keras.optimizers.Optimizer) and lr_schedule != "constant"
    if steps_per_epoch is None and (loop or decaying):
        raise ValueError("the dataset's length is unknown: pass steps_per_epoch (a decaying learning-rate schedule "
                         "and the multi-worker loop need it)")
    with strategy.scope():
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            optimizer = make_optimizer(optimizer, learning_rate, lr_schedule, (steps_per_epoch or 0) * epochs)
        model.compile(optimizer=optimizer, jit_compile=False if loop else jit_compile)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    best_path = os.path.join(out_dir, "checkpoint.keras") if out_dir else None
    if loop:
        from rpn_tf.modeling.distributed import DistributedTrainer

        checkpoints = os.path.join(out_dir, "checkpoints") if out_dir else tempfile.mkdtemp(prefix="rpn_tf_loop_")
        trainer = DistributedTrainer(model, strategy, checkpoints, verbose=bool(verbose))
        return trainer.fit(dataset, epochs, steps_per_epoch, validation_data=validation_data,
                           validation_steps=validation_steps, best_model_path=best_path)
    callbacks, initial_epoch = list(callbacks), 0
    if out_dir:
        from rpn_tf.modeling.callbacks import AtomicCheckpoint, CrashSafeBackup, validation_monitor

        backup = CrashSafeBackup(os.path.join(out_dir, "backup"))
        initial_epoch = backup.restore(model)
        monitor, mode = validation_monitor(model) if validation_data is not None else (None, "max")
        callbacks += [AtomicCheckpoint(best_path, monitor=monitor, mode=mode, resume=initial_epoch > 0),
                      keras.callbacks.TensorBoard(os.path.join(out_dir, "logs")), backup]
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    infinite = int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY)
    history = model.fit(dataset, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                        steps_per_epoch=steps_per_epoch if infinite else None, validation_data=validation_data,
                        validation_steps=validation_steps, verbose=verbose)
    return history.history


def steps_per_epoch_of(images, batch_size, drop_remainder=False):
    """Steps of an epoch over ``images`` in batches of ``batch_size``."""
    return images // batch_size if drop_remainder else math.ceil(images / batch_size)


__all__ = ["LR_SCHEDULES", "OPTIMIZERS", "make_optimizer", "needs_native_loop", "steps_per_epoch_of",
           "train_model"]
