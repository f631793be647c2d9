"""``rpn-tf train``: dataset summary, optimizer and schedule, strategies (fit or the TensorFlow-native loop), tf.data
service, checkpoints and resume."""

from __future__ import annotations

import math
import os
import sys
import time

import keras
import tensorflow as tf

from rpn_tf.tools.options import build_model, load_dataset
from rpn_tf.tools.errors import UsageError

STEP_DECAY_AT = 0.75  # the article: 60k iterations at 0.001, then 20k at 0.0001


SUMMARY_SAMPLE = 100  # elements read for the summary line unless the exact count is needed or asked for


def dataset_summary(dataset, report, exact=False, sample=SUMMARY_SAMPLE):
    """``(images, boxes, line)``: a one-line summary with what the adapter's ``report`` excluded. Cheap by default:
    at most ``sample`` + 1 elements are read (decoding their images); ``images`` is exact when the dataset ended
    within them or its cardinality is known, else ``None`` (``boxes``: those of the first ``sample``). ``exact``
    reads every element."""
    images = boxes = 0
    more = False
    for element in (dataset if exact else dataset.take(sample + 1)):
        if not exact and images == sample:  # one element past the sample: there is more
            more = True
            break
        images += 1
        boxes += int(element["boxes"].shape[0])
    excluded = []
    if report is not None:
        excluded = [f"{count} {reason}" for reason, count in report.excluded_boxes.items() if count]
        if report.skipped:
            excluded.append(f"{len(report.skipped)} records skipped as malformed")
    note = f" (excluded: {', '.join(excluded)})" if excluded else ""
    if not more:
        return images, boxes, f"dataset: {images} images, {boxes} boxes{note}"
    cardinality = int(dataset.cardinality())
    count = cardinality if cardinality >= 0 else None
    total = f"{count} images" if count is not None else f"more than {sample} images"
    return count, boxes, (f"dataset: {total}, {boxes} boxes in the first {sample}{note} (--count-dataset counts "
                          "every image and box)")


def _count_batches(dataset):
    cardinality = int(dataset.cardinality())
    return cardinality if cardinality >= 0 else sum(1 for _ in dataset)


def make_optimizer(name, learning_rate, schedule, total_steps):
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


def train(args):
    from rpn_tf.modeling.callbacks import AtomicCheckpoint, CrashSafeBackup, save_atomically
    from rpn_tf.modeling.distributed import DistributedTrainer, is_chief, strategy_from_name

    loop = args.strategy in ("multi_worker", "tpu")
    if loop and args.jit_compile:
        raise UsageError(f"--jit-compile is not supported with --strategy {args.strategy} (TPU steps are always "
                         "compiled with XLA)")
    # The strategy first: multi-worker collectives must be configured before any other TensorFlow op runs.
    strategy = strategy_from_name(args.strategy, args.tpu)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if args.strategy == "tpu" else "mixed_float16")
    elements, report = load_dataset(args)
    # The number of images is needed for a decaying schedule or the TensorFlow-native loop; otherwise a bounded
    # sample gives the summary line (on a large dataset, or one read by tf.data service workers, counting it would
    # decode everything once more on this host).
    needs_count = loop or args.lr_schedule != "constant"
    if args.data_service and not (needs_count or args.count_dataset):
        images, line = None, "dataset: read by the tf.data service workers (--count-dataset counts it here)"
    else:
        images, _, line = dataset_summary(elements, report, exact=args.count_dataset)
        if images is None and needs_count:
            print(f"{line}\ncounting the dataset for the steps per epoch ...", flush=True)
            images, _, line = dataset_summary(elements, report, exact=True)
    print(line, flush=True)
    if images == 0:
        raise UsageError("the dataset has no images")
    steps_per_epoch = None
    if images is not None:
        steps_per_epoch = images // args.batch_size if loop else math.ceil(images / args.batch_size)
        if steps_per_epoch == 0:
            raise UsageError(f"--batch-size {args.batch_size} is larger than the dataset ({images} images)")
    with strategy.scope():
        model = build_model(args)
        optimizer = make_optimizer(args.optimizer, args.learning_rate, args.lr_schedule,
                                   (steps_per_epoch or 0) * args.epochs)
        model.compile(optimizer=optimizer, jit_compile=args.jit_compile and not loop)
    dataset = (elements.shuffle(256, seed=0 if loop else None, reshuffle_each_iteration=True)
               .map(model.target_encoder, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(args.batch_size, drop_remainder=loop))
    if args.data_service:
        from rpn_tf.data.service import distribute

        dataset = distribute(dataset, args.data_service, args.data_service_mode)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    path = os.path.join(args.out, "model.keras")
    if loop:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        trainer = DistributedTrainer(model, strategy, os.path.join(args.out, "checkpoints"))
        validation = None
        if args.val_data:  # whole global batches, sharded like the training data (a last partial batch is left out)
            validation = (load_dataset(args, args.val_data)[0]
                          .map(model.target_encoder, num_parallel_calls=tf.data.AUTOTUNE)
                          .batch(args.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
        validation_steps = None if validation is None else _count_batches(validation)
        if validation_steps == 0:
            raise UsageError(f"--val-data holds fewer images than one --batch-size {args.batch_size} batch")
        trainer.fit(dataset.with_options(options), args.epochs, steps_per_epoch, validation_data=validation,
                    validation_steps=validation_steps,
                    best_model_path=os.path.join(args.out, "checkpoint.keras"))
        if not is_chief(strategy):
            return 0
    else:
        # Resume: an interrupted run (even killed mid-write) restarts from its last finished epoch.
        backup = CrashSafeBackup(os.path.join(args.out, "backup"))
        initial_epoch = backup.restore(model)
        validation = None
        if args.val_data:
            validation = (load_dataset(args, args.val_data)[0]
                          .map(model.target_encoder, num_parallel_calls=tf.data.AUTOTUNE)
                          .batch(args.batch_size).prefetch(tf.data.AUTOTUNE))
        # With validation data the checkpoint is the best model by validation recall@300 (IoU 0.5), else the last.
        top_n = getattr(model, "recall_top_n", None)  # a FasterRCNN has none: then the lowest validation loss
        monitor = None if validation is None else (f"val_recall@{top_n}_iou0.5" if top_n else "val_loss")
        callbacks = [AtomicCheckpoint(os.path.join(args.out, "checkpoint.keras"), monitor=monitor,
                                      mode="min" if monitor == "val_loss" else "max", resume=initial_epoch > 0),
                     keras.callbacks.TensorBoard(os.path.join(args.out, "logs")), backup]
        model.fit(dataset, epochs=args.epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                  validation_data=validation, verbose=1 if sys.stdout.isatty() else 2)
    save_atomically(model, path)
    print(f"trained in {time.perf_counter() - start:.0f} s; saved {path}")
    return 0
