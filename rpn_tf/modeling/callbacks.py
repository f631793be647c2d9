"""Training callbacks that survive a kill at any moment: ``CrashSafeBackup`` (resume) and ``AtomicCheckpoint``.

Keras's ``BackupAndRestore`` rewrites its backup in place: a kill during the write leaves a truncated
``.weights.h5`` or an empty ``training_metadata.json`` and every restart then fails. Here every backup is a new file,
``epoch-K.weights.h5``, written under a temporary name and renamed into place (atomic), so the folder only ever holds
complete backups; the newest readable one is restored, an unreadable one is reported in one line and skipped.
"""

from __future__ import annotations

import json
import os
import re

import keras

_BACKUP = re.compile(r"^epoch-(\d+)\.weights\.h5$")


class CrashSafeBackup(keras.callbacks.Callback):
    """Backs up the model's weights after every epoch; ``restore`` loads the newest good backup.

    Use::

        backup = CrashSafeBackup("run/backup")
        model.fit(data, epochs=10, initial_epoch=backup.restore(model), callbacks=[backup])

    Args:
      backup_dir: folder of the backups (created).
      keep: backups kept (the newest ``keep``; at least 2, so that a bad newest one has a fallback).
      delete_on_end: remove the backups when ``fit`` ends normally (a finished run starts afresh).
      log: where the one-line messages go (``print`` by default).
    """

    def __init__(self, backup_dir, keep=2, delete_on_end=True, log=print):
        super().__init__()
        self.backup_dir = str(backup_dir)
        self.keep = max(int(keep), 2)
        self.delete_on_end = bool(delete_on_end)
        self.log = log

    def backups(self):
        """``[(epoch, path)]`` of the complete backups, newest first."""
        if not os.path.isdir(self.backup_dir):
            return []
        found = [(int(match.group(1)), os.path.join(self.backup_dir, name))
                 for name in os.listdir(self.backup_dir) if (match := _BACKUP.match(name))]
        return sorted(found, reverse=True)

    def restore(self, model) -> int:
        """Loads the newest readable backup into ``model``; returns its epoch (0 when there is none), the
        ``initial_epoch`` for ``fit``. A compiled model's optimizer is built first, so that its state (step count:
        the learning-rate schedule; moments) is restored with the weights rather than skipped."""
        backups = self.backups()
        optimizer = getattr(model, "optimizer", None)
        if backups and optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)
        for epoch, path in backups:
            try:
                model.load_weights(path)
            except Exception as error:  # noqa: BLE001  (any unreadable file: report it, fall back)
                self.log(f"backup {path} is unreadable ({type(error).__name__}); trying the previous one")
                continue
            self.log(f"resuming from epoch {epoch} ({path})")
            return epoch
        return 0

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.backup_dir, exist_ok=True)
        final = os.path.join(self.backup_dir, f"epoch-{epoch + 1}.weights.h5")
        temporary = os.path.join(self.backup_dir, f".tmp-{os.getpid()}.weights.h5")
        self.model.save_weights(temporary, overwrite=True)
        os.replace(temporary, final)  # atomic: the folder never holds a half-written backup under a backup name
        for _, path in self.backups()[self.keep:]:
            os.remove(path)

    def on_train_end(self, logs=None):
        if self.delete_on_end:
            for _, path in self.backups():
                os.remove(path)


def save_atomically(model, path):
    """``model.save(path)`` through a temporary file and a rename: ``path`` is either the old file or the new one,
    never half-written."""
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
    try:
        model.save(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def validation_monitor(model):
    """``(monitor, mode)`` of the best-model checkpoint with validation data: an RPN's validation recall@N (IoU 0.5,
    the higher the better); a detector has no recall metric, so its lowest validation loss."""
    top_n = getattr(model, "recall_top_n", None)
    return (f"val_recall@{top_n}_iou0.5", "max") if top_n else ("val_loss", "min")


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (``.keras``) after every epoch with ``save_atomically``; with ``monitor`` (e.g.
    ``"val_recall@300_iou0.5"``) only when that logged value improves (``mode="max"``) — the best model. The best
    value is recorded beside it (``PATH.best.json``); ``resume=True`` (a run that resumes) starts from it, so a
    resumed run never replaces a better model with a worse one."""

    def __init__(self, path, monitor=None, mode="max", resume=False):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.path, self.monitor, self.mode = str(path), monitor, mode
        self.best = None
        # A resumed run keeps the best so far (recorded beside the model); a new run starts afresh.
        if resume and monitor is not None and os.path.exists(self._record) and os.path.exists(self.path):
            try:
                with open(self._record) as handle:
                    record = json.load(handle)
                if record.get("monitor") == monitor:
                    self.best = float(record["best"])
            except (OSError, ValueError, KeyError, TypeError):
                self.best = None

    @property
    def _record(self):
        return self.path + ".best.json"

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None:
                return
            if self.best is not None and (value <= self.best if self.mode == "max" else value >= self.best):
                return
            self.best = value
        save_atomically(self.model, self.path)
        if self.monitor is not None:
            directory, name = os.path.split(os.path.abspath(self._record))
            temporary = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
            with open(temporary, "w") as handle:
                json.dump({"monitor": self.monitor, "best": float(self.best), "epoch": epoch + 1}, handle)
            os.replace(temporary, self._record)
