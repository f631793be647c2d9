"""A TensorFlow-native training loop for ``RPNModel`` under any ``tf.distribute`` strategy, multi-worker included.

Keras 3's ``model.fit`` fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585: ``ValueError: Attempt
to convert a value (PerReplica…)``, TF 2.16–2.21), so multi-worker and TPU training go through this loop instead:
``strategy.run(model.train_step, …)`` over ``strategy.experimental_distribute_dataset`` — the model's own step, loss
normalisation (over the global batch) and metrics, not a copy — with ``tf.train.CheckpointManager`` for resume and a
Keras-style progress line per epoch. It works with ``MultiWorkerMirroredStrategy``, ``TPUStrategy``,
``MirroredStrategy`` and the default strategy.

Use::

    strategy = tf.distribute.MultiWorkerMirroredStrategy()   # TF_CONFIG names the workers
    with strategy.scope():
        model = rpn_tf.RPNModel(...)
        model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9))
    trainer = DistributedTrainer(model, strategy, "run/checkpoints")
    trainer.fit(dataset, epochs=10, steps_per_epoch=500)   # dataset: batched with the GLOBAL batch size

Every worker runs the same program with the same dataset (sharded by ``tf.data``'s auto-sharding: each global batch
is split over the replicas, so a step equals one single-device step on the global batch) and the same number of
steps; only the chief writes checkpoints to ``checkpoint_dir`` (the others write to throw-away folders, as
collective checkpointing requires) and only the chief should save the model or export it (``is_chief``).
"""

from __future__ import annotations

import os
import sys
import time

import tensorflow as tf


def strategy_from_name(name, tpu=None):
    """A ``tf.distribute`` strategy by name: ``default``, ``mirrored``, ``multi_worker`` (workers from ``TF_CONFIG``)
    or ``tpu`` (``tpu``: the TPU name or address for ``TPUClusterResolver``; default: from the environment)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy multi_worker needs TF_CONFIG (the cluster and this worker's task), e.g. "
                             '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                             '"index": 0}}')
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}: use default, mirrored, multi_worker or tpu")


def is_chief(strategy=None):
    """Whether this process is the chief of its cluster — the one that writes checkpoints, the model and exports
    (``strategy.extended.should_checkpoint``; always true outside multi-worker training)."""
    return bool((strategy or tf.distribute.get_strategy()).extended.should_checkpoint)


class DistributedTrainer:
    """Trains a compiled ``RPNModel`` with ``strategy.run`` over a distributed dataset, with resume.

    Args:
      model: an ``RPNModel`` built and compiled (with its optimizer) under ``strategy.scope()``.
      strategy: the ``tf.distribute`` strategy (``strategy_from_name``).
      checkpoint_dir: where the chief keeps the last ``max_to_keep`` checkpoints (model, optimizer, epoch); a run
        started again with the same folder resumes after the last finished epoch.
      max_to_keep: checkpoints kept (2).
      verbose: print a progress line per epoch on the chief (``True``).

    ``checkpoint_dir`` must be on storage every worker reads (a shared file system or a bucket): each worker
    restores from it, so that all replicas resume from the same weights and epoch.
    """

    def __init__(self, model, strategy, checkpoint_dir, max_to_keep=2, verbose=True):
        if getattr(model, "optimizer", None) is None:
            raise ValueError("compile the model (with its optimizer) under strategy.scope() before training")
        self.model, self.strategy = model, strategy
        self.chief = is_chief(strategy)
        self.verbose = verbose and self.chief
        self.checkpoint_dir = checkpoint_dir
        with strategy.scope():
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self._checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=self.epoch)
        # Collective checkpointing: every worker saves; only the chief's copy is kept.
        directory = checkpoint_dir if self.chief else os.path.join(
            checkpoint_dir, f".worker-{getattr(strategy.cluster_resolver, 'task_id', 0)}-tmp")
        self._manager = tf.train.CheckpointManager(self._checkpoint, directory, max_to_keep=max_to_keep)
        self._step = self._replica_loop(model.train_step)
        self._test_step = self._replica_loop(model.test_step)

    def _checked(self, dataset):
        """``dataset`` through the model's input boundary (``check_batch``) on the host, as ``fit``'s: its checks
        hold under XLA and on a TPU."""
        from rpn_tf.modeling.inputs import checked_inputs

        return checked_inputs(dataset, None, self.model.check_batch)[0]

    def restore(self):
        """Restores the newest checkpoint of ``checkpoint_dir`` (if any) and returns the epoch to start from."""
        latest = tf.train.latest_checkpoint(self.checkpoint_dir)
        if latest is None:
            return 0
        self._checkpoint.restore(latest)
        epoch = int(self.epoch.numpy())
        if self.verbose:
            print(f"resuming from epoch {epoch} ({latest})", flush=True)
        return epoch

    def _replica_loop(self, model_step):
        """A ``tf.function(iterator, steps)`` running ``model_step`` (the model's ``train_step`` or ``test_step``) on
        every replica for ``steps`` batches."""
        def step(data):
            model_step(data)

        def run(iterator, steps):
            for _ in tf.range(steps):
                self.strategy.run(step, args=(next(iterator),))

        return tf.function(run)

    def _validate(self, distributed, steps):
        """``{"val_" + metric: value}`` over ``steps`` global batches of the validation data."""
        for metric in self.model.metrics:
            metric.reset_state()
        self._test_step(iter(distributed), tf.constant(steps))
        return {f"val_{name}": float(value) for name, value in self.model._logs().items()}

    def fit(self, dataset, epochs, steps_per_epoch=None, steps_per_call=1, validation_data=None,
            validation_steps=None, best_model_path=None, monitor=None):
        """Trains from the epoch after the last checkpoint up to ``epochs``; returns ``{metric: [per epoch]}``.

        Args:
          dataset: a ``tf.data.Dataset`` of ``(images, targets)`` batched with the *global* batch size (use
            ``drop_remainder=True`` under multi-worker strategies: every replica must get a batch on every step).
          epochs: the last epoch to reach.
          steps_per_epoch: steps per epoch; default: the dataset's cardinality (it must then be known and finite).
          steps_per_call: steps run per ``tf.function`` call (more: less Python overhead, coarser progress).
          validation_data: optional batched ``(images, targets)`` dataset with ``gt_boxes``, evaluated after every
            epoch (``val_loss``, ``val_recall@N_iou0.5``, … in the history and the progress line), as ``fit``'s
            ``validation_data``: sharded like the training data, the metrics summed over every replica of every
            worker. Batch it with the global batch size and ``drop_remainder=True`` under multi-worker strategies
            (every worker runs the same number of steps).
          validation_steps: its batches (default: its cardinality).
          best_model_path: with validation, the chief saves the whole model there (``.keras``, atomically) when
            ``monitor`` (default ``val_recall@{model.recall_top_n}_iou0.5``) improves — as ``rpn-tf train
            --val-data`` does with ``fit``; the best value survives a resume (``AtomicCheckpoint``).
        """
        if steps_per_epoch is None:
            steps_per_epoch = int(dataset.cardinality().numpy())
            if steps_per_epoch < 0:
                raise ValueError("the dataset's length is unknown or infinite: pass steps_per_epoch (every worker "
                                 "must run the same number of steps)")
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        from rpn_tf.data.records import named_data_errors

        with named_data_errors():
            return self._fit(dataset, epochs, steps_per_epoch, steps_per_call, validation_data, validation_steps,
                             best_model_path, monitor)

    def _fit(self, dataset, epochs, steps_per_epoch, steps_per_call, validation_data, validation_steps,
             best_model_path, monitor):
        initial_epoch = self.restore()
        history = {}
        # the model's input boundary (check_batch) on the host, as fit's: its checks hold under XLA / on a TPU
        distributed = self.strategy.experimental_distribute_dataset(self._checked(dataset))
        validation, best = None, None
        if validation_data is not None:
            if validation_steps is None:
                validation_steps = int(validation_data.cardinality().numpy())
                if validation_steps < 0:
                    raise ValueError("the validation dataset's length is unknown: pass validation_steps")
            if validation_steps <= 0:
                raise ValueError("the validation data holds no whole global batch: validation would be skipped")
            options = tf.data.Options()  # sharded like the training data: the replicas' parts add up to the whole
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            validation = self.strategy.experimental_distribute_dataset(
                self._checked(validation_data).with_options(options))
            if best_model_path and self.chief:
                from rpn_tf.modeling.callbacks import AtomicCheckpoint, validation_monitor

                if monitor is None:
                    monitor, mode = validation_monitor(self.model)
                else:
                    mode = "min" if monitor.endswith("loss") else "max"
                best = AtomicCheckpoint(best_model_path, monitor, mode=mode, resume=initial_epoch > 0)
                best.set_model(self.model)
        for epoch in range(initial_epoch, epochs):
            start = time.perf_counter()
            for metric in self.model.metrics:
                metric.reset_state()
            iterator = iter(distributed)
            done = 0
            while done < steps_per_epoch:
                count = min(steps_per_call, steps_per_epoch - done)
                self._step(iterator, tf.constant(count))
                done += count
            logs = {name: float(value) for name, value in self.model._logs(include_recall=False).items()}
            if validation is not None:
                logs.update(self._validate(validation, validation_steps))
            self.epoch.assign(epoch + 1)
            self._manager.save(checkpoint_number=epoch + 1)
            if not self.chief:  # the throw-away copy of a non-chief worker
                tf.io.gfile.rmtree(self._manager.directory)
            if best is not None:
                best.on_epoch_end(epoch, logs)
            for name, value in logs.items():
                history.setdefault(name, []).append(value)
            if self.verbose:
                print(f"epoch {epoch + 1}/{epochs} - {time.perf_counter() - start:.0f}s - "
                      + " - ".join(f"{name}: {value:.4f}" for name, value in logs.items()), file=sys.stdout,
                      flush=True)
        return history


__all__ = ["DistributedTrainer", "is_chief", "strategy_from_name"]
