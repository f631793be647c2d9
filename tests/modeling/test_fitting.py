"""train_model, the one training entry point (rpn-tf train, the recipes, the native loop): optimizers and
schedules by name, checkpoints and resume in out_dir, clear errors."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
from rpn_tf.modeling.fitting import make_optimizer, needs_native_loop, train_model

SIZE = 64


def tiny_data(count=4):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (count, SIZE, SIZE, 3)).astype(np.float32)
    boxes = np.tile(np.array([[[8, 8, 40, 40], [-1, -1, -1, -1]]], np.float32), (count, 1, 1))
    return tf.data.Dataset.from_tensor_slices((images, {"gt_boxes": boxes})).batch(2)


def tiny_rpn():
    keras.utils.set_random_seed(0)
    return rpn_tf.RPNModel((SIZE, SIZE), backbone="simple", anchor_config=rpn_tf.AnchorConfig(stride=16,
                                                                                             scales=(2.0,)),
                           target_encoder_config={"max_boxes": 2})


def test_optimizers_and_schedules_by_name():
    sgd = make_optimizer("sgd", 0.01, "step", total_steps=100)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.9
    assert float(sgd.learning_rate) == pytest.approx(0.01)
    sgd.iterations.assign(80)
    assert float(sgd.learning_rate) == pytest.approx(0.001)  # × 0.1 after 75 % of the steps
    cosine = make_optimizer("adam", 1e-3, "cosine", total_steps=10)
    cosine.iterations.assign(10)
    assert float(cosine.learning_rate) == pytest.approx(0.0, abs=1e-9)
    assert isinstance(make_optimizer("adamw"), keras.optimizers.AdamW)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer("rmsprop")
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        make_optimizer("adam", 1e-3, "linear")
    assert not needs_native_loop(tf.distribute.get_strategy())


def test_train_model_writes_checkpoints_and_resumes(tmp_path):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    out = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train_model(tiny_rpn(), tiny_data(), 3, learning_rate=1e-3, lr_schedule="cosine", out_dir=out,
                    callbacks=[Interrupt()], verbose=0)
    model = tiny_rpn()
    history = train_model(model, tiny_data(), 3, learning_rate=1e-3, lr_schedule="cosine", out_dir=out, verbose=0)
    assert len(history["loss"]) == 2  # epochs 2 and 3: resumed after the first finished epoch
    assert int(model.optimizer.iterations) == 6  # the optimizer's step (the schedule's position) was restored too
    assert np.isfinite(history["loss"]).all()
    assert isinstance(keras.saving.load_model(os.path.join(out, "checkpoint.keras")), rpn_tf.RPNModel)
    assert os.path.isdir(os.path.join(out, "logs"))


def test_train_model_errors_are_named():
    unknown = tiny_data().repeat().take(2).filter(lambda images, targets: True)
    with pytest.raises(ValueError, match="length is unknown: pass steps_per_epoch"):
        train_model(tiny_rpn(), unknown, 1, lr_schedule="cosine", verbose=0)
    with pytest.raises(ValueError, match="epochs must be an integer >= 0"):
        train_model(tiny_rpn(), tiny_data(), -1, verbose=0)
    with pytest.raises(ValueError, match="jit_compile must be"):
        train_model(tiny_rpn(), tiny_data(), 1, jit_compile="yes", verbose=0)
    history = train_model(tiny_rpn(), unknown, 1, verbose=0)  # constant rate: fit reads to the end
    assert len(history["loss"]) == 1
    history = train_model(tiny_rpn(), tiny_data().repeat(), 2, steps_per_epoch=3, lr_schedule="cosine", verbose=0)
    assert len(history["loss"]) == 2  # an endless dataset: steps_per_epoch batches an epoch
