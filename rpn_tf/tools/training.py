"""``rpn-tf train``: the dataset summary, the strategy, the input pipeline (tf.data service) and the final save; the
training itself is ``rpn_tf.modeling.fitting.train_model`` (optimizer and schedule, fit or the TensorFlow-native
loop, checkpoints and resume), shared with the recipes."""

from __future__ import annotations

import os
import time

import keras
import tensorflow as tf

from rpn_tf.modeling.fitting import steps_per_epoch_of
from rpn_tf.tools.options import build_model, load_dataset
from rpn_tf.tools.errors import UsageError

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


def _initial_model(args):
    """``--init``: the model of a .keras file, its class predictor replaced for ``--num-classes`` (a detector)."""
    from rpn_tf.modeling.faster_rcnn import FasterRCNN
    from rpn_tf.tools.options import load_model_file

    model = load_model_file(args.init)
    if isinstance(model, FasterRCNN) and args.num_classes and args.num_classes != model.num_classes:
        print(f"{args.init}: {model.num_classes} classes → {args.num_classes} (a new class predictor)", flush=True)
        model = model.with_num_classes(args.num_classes)
    return model


def train(args):
    from rpn_tf.modeling.callbacks import save_atomically
    from rpn_tf.modeling.distributed import is_chief, strategy_from_name
    from rpn_tf.modeling.fitting import train_model

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
        steps_per_epoch = steps_per_epoch_of(images, args.batch_size, drop_remainder=loop)
        if steps_per_epoch == 0:
            raise UsageError(f"--batch-size {args.batch_size} is larger than the dataset ({images} images)")
    with strategy.scope():
        model = _initial_model(args) if args.init else build_model(args)
    dataset = (elements.shuffle(256, seed=0 if loop else None, reshuffle_each_iteration=True)
               .map(model.target_encoder, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(args.batch_size, drop_remainder=loop))
    if args.data_service:
        from rpn_tf.data.service import distribute

        dataset = distribute(dataset, args.data_service, args.data_service_mode)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    validation = validation_steps = None
    if args.val_data:  # under the native loop whole global batches, sharded like the training data
        validation = (load_dataset(args, args.val_data)[0]
                      .map(model.target_encoder, num_parallel_calls=tf.data.AUTOTUNE)
                      .batch(args.batch_size, drop_remainder=loop).prefetch(tf.data.AUTOTUNE))
        if loop:
            validation_steps = _count_batches(validation)
            if validation_steps == 0:
                raise UsageError(f"--val-data holds fewer images than one --batch-size {args.batch_size} batch")
    if loop:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    start = time.perf_counter()
    # Resume: an interrupted run (even killed mid-write) restarts from its last finished epoch. With validation data
    # the checkpoint is the best model (validation recall@300 IoU 0.5 of an RPN, loss of a detector), else the last.
    train_model(model, dataset, args.epochs, optimizer=args.optimizer, learning_rate=args.learning_rate,
                lr_schedule=args.lr_schedule, steps_per_epoch=steps_per_epoch, strategy=strategy, out_dir=args.out,
                validation_data=validation, validation_steps=validation_steps, jit_compile=args.jit_compile,
                verbose="auto")
    if loop and not is_chief(strategy):
        return 0
    path = os.path.join(args.out, "model.keras")
    save_atomically(model, path)
    print(f"trained in {time.perf_counter() - start:.0f} s; saved {path}")
    return 0
