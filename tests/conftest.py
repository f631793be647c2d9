import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tests/reference.py is imported as a module of the tests.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402

# Two logical CPU devices for the MirroredStrategy test; must happen before TensorFlow initializes its devices.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

import pytest  # noqa: E402

import rpn_tf  # noqa: E402
from helpers import IMAGE_SIZE  # noqa: E402


@pytest.fixture(scope="module")
def encoder():
    """The article's encoder at 800×800, seeded."""
    return rpn_tf.RpnTargetEncoder(IMAGE_SIZE, seed=7)


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One two-replica MirroredStrategy over the two logical CPUs for every test that needs one: each strategy
    numbers its collective instances from the same start, so a second strategy in the process collides with the
    first one's synchronized batch norm ("Shape mismatch in the collective instance")."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
