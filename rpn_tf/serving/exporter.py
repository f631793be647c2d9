"""Export an ``RPNModel`` or a ``FasterRCNN`` as a TensorFlow Serving SavedModel with all post-processing in the
graph.

The signatures are ``rpn_tf.serving.module.RpnServingModule``'s. The export goes through Keras's public
``keras.export.ExportArchive`` and is atomic: it is written, warmup records included, into a hidden temporary
folder beside ``BASE/NAME/VERSION`` and renamed into place only when complete, so TF Serving never sees a
half-written version.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from rpn_tf.modeling.faster_rcnn import FasterRCNN
from rpn_tf.modeling.rpn_model import RPNModel
from rpn_tf.serving import client
from rpn_tf.serving.module import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_PIXELS, IMAGE_SIGNATURES, SERVED_NMS, \
    RpnServingModule  # noqa: F401

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# What the export chose, beside the warmup records (TF Serving ignores other files in assets.extra).
EXPORT_RECORD = os.path.join("assets.extra", "rpn_tf_export.json")
_TEMPORARY_MARK = ".tmp-"


def load_model(model_path, config_path=None):
    """An ``RPNModel`` or ``FasterRCNN`` from a ``.keras`` file, or an ``RPNModel`` from a weights file plus a JSON
    of ``RPNModel.get_config()``."""
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"{model_path} does not exist")
    if model_path.endswith(".keras"):
        model = keras.models.load_model(model_path)
    else:
        if config_path is None:
            raise ValueError(f"{model_path} is a weights file: pass the model's config JSON too "
                             "(json.dump(model.get_config(), ...))")
        with open(config_path) as file:
            model = RPNModel.from_config(json.load(file))
        model.load_weights(model_path)
    if not isinstance(model, (RPNModel, FasterRCNN)):
        raise TypeError(f"{model_path} holds a {type(model).__name__}, not an rpn_tf.RPNModel or FasterRCNN")
    return model


def next_version(model_dir) -> int:
    """1 + the largest numeric version folder in ``model_dir`` (1 if none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(name) for name in os.listdir(model_dir) if name.isdigit()]
    return max(versions, default=0) + 1


def warmup_image(image_size) -> bytes:
    """A synthetic JPEG (a smooth gradient) of ``image_size`` for warmup requests."""
    height, width = image_size
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    image = np.stack([np.broadcast_to(y, (height, width)), np.broadcast_to(x, (height, width)),
                      np.full((height, width), 128.0, np.float32)], axis=-1).astype(np.uint8)
    return tf.io.encode_jpeg(image).numpy()


def warmup_requests(model_name, image_size, jpeg=None):
    """One ``PredictRequest`` per image signature, on ``jpeg`` (default: ``warmup_image``)."""
    jpeg = jpeg or warmup_image(image_size)
    image = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"jpeg"])),
    })).SerializeToString()
    return [client.predict_request(model_name, "serving_default", encoded_images=[jpeg]),
            client.predict_request(model_name, "image_tensor", images=image[None]),
            client.predict_request(model_name, "tf_example", serialized_examples=[example])]


def write_warmup_records(export_dir, requests):
    """Writes ``assets.extra/tf_serving_warmup_requests`` (TFRecord of ``PredictionLog``)."""
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


STALE_AFTER_S = 6 * 3600  # a temporary folder of another host counts as abandoned after this long


def _host():
    """This host's name as it appears in temporary folder names."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64]


def _temporary_name(version):
    """``.{version}.tmp-{host}-{pid}``: unique across the hosts and containers (PID 1 in many) sharing a base dir."""
    return f".{version}{_TEMPORARY_MARK}{_host()}-{os.getpid()}"


def _remove_stale_temporaries(model_dir):
    """Deletes temporary export folders left by killed exports: of this host when their process is gone, of other
    hosts (whose processes cannot be checked from here) when untouched for ``STALE_AFTER_S``."""
    if not os.path.isdir(model_dir):
        return
    host = _host()
    for name in os.listdir(model_dir):
        if not (name.startswith(".") and _TEMPORARY_MARK in name):
            continue
        owner, _, pid = name.rsplit(_TEMPORARY_MARK, 1)[1].rpartition("-")
        if owner in ("", host):
            alive = pid.isdigit() and _process_alive(int(pid))
        else:
            try:
                alive = time.time() - os.path.getmtime(os.path.join(model_dir, name)) < STALE_AFTER_S
            except OSError:
                continue
        if not alive:
            print(f"removing {os.path.join(model_dir, name)}, left by an interrupted export")
            shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(temporary_dir, model_dir, export_dir, automatic):
    """Renames the complete ``temporary_dir`` to ``export_dir`` (atomic on one file system; refused by the kernel
    when a complete version folder of another export is already there) and returns where it went: with an
    ``automatic`` version, the next free one is taken when another export got there first."""
    while True:
        try:
            os.rename(temporary_dir, export_dir)
            return export_dir
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not os.path.isdir(export_dir):
                raise
            if not automatic:
                raise FileExistsError(f"{export_dir} was written by another export while this one ran; TF Serving "
                                      f"versions are immutable: choose another --version") from None
            export_dir = os.path.join(model_dir, str(next_version(model_dir)))


def export_record(export_dir):
    """What an export chose (``EXPORT_RECORD``: NMS, model class, canvas, pixel limit, rpn-tf version), or ``None``
    for an export without the record."""
    path = os.path.join(export_dir, EXPORT_RECORD)
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return json.load(file)


def export_saved_model(model, base_dir, model_name="rpn", version=None, roi_sampler=None,
                       warmup_jpeg=None, max_pixels=DEFAULT_MAX_PIXELS, nms="combined",
                       max_batch_size=DEFAULT_MAX_BATCH_SIZE, max_request_pixels=None) -> str:
    """Writes ``base_dir/model_name/version/`` (a SavedModel with warmup records) and returns that path.

    Args:
      model: an ``RPNModel`` or a ``FasterRCNN`` (or a path accepted by ``load_model``).
      base_dir: TF Serving's model base path.
      model_name: the served model's name.
      version: integer version ≥ 1; default: the next free one. An existing version is never overwritten: when
        another export into the same ``base_dir`` takes the chosen version while this one is being written, an
        automatic version moves on to the next free number, an explicit one raises ``FileExistsError``.
      roi_sampler: the ``RoiSampler`` behind ``sample_rois`` (default: ``RoiSampler(seed=0)``).
      warmup_jpeg: JPEG bytes for the warmup requests (default: a synthetic image).
      max_pixels: encoded images above this height × width (read from the header, before decoding) are refused
        with ``InvalidArgument`` naming the element (default 36 000 000).
      max_batch_size: elements per request (32); more are refused with ``InvalidArgument`` (the model's memory
        grows with the batch: ``docs/reliability.md``).
      max_request_pixels: the pixels of one request's images together, read from their headers before decoding
        (default 4 × ``max_pixels``); more are refused.
      nms: the NMS baked into the graph (``SERVED_NMS``): ``"combined"`` (default; CPU kernels, the fastest on a
        CPU server) or ``"padded"`` (every op has a GPU kernel; with the gather ROI Align). Chosen here, never by
        the exporting machine, and recorded in ``assets.extra/rpn_tf_export.json`` (``export_record``).
    """
    if isinstance(model, str):
        model = load_model(model)
    if version is not None and (isinstance(version, bool) or int(version) != version or version < 1):
        raise ValueError(f"version must be an integer >= 1 (TF Serving's numeric versions), got {version!r}")
    model_dir = os.path.join(base_dir, model_name)
    _remove_stale_temporaries(model_dir)
    explicit = version
    version = next_version(model_dir) if version is None else int(version)
    export_dir = os.path.join(model_dir, str(version))
    if os.path.exists(export_dir):
        raise FileExistsError(f"{export_dir} exists; TF Serving versions are immutable, choose another version")
    temporary_dir = os.path.join(model_dir, _temporary_name(version))
    os.makedirs(model_dir, exist_ok=True)
    try:
        module = RpnServingModule(model, roi_sampler, max_pixels, nms, max_batch_size, max_request_pixels)
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.track(module.roi_sampler)
        for name, (function, input_signature) in module.endpoints().items():
            archive.add_endpoint(name, function, input_signature)
        archive.write_out(temporary_dir, verbose=False)
        write_warmup_records(temporary_dir, warmup_requests(model_name, model.image_size, warmup_jpeg))
        import rpn_tf

        with open(os.path.join(temporary_dir, EXPORT_RECORD), "w") as file:
            json.dump({"nms": nms, "model": type(model).__name__, "image_size": list(model.image_size),
                       "max_pixels": module.max_pixels, "max_batch_size": module.max_batch_size,
                       "max_request_pixels": module.max_request_pixels, "rpn_tf_version": rpn_tf.__version__},
                      file, indent=1)
        export_dir = _publish(temporary_dir, model_dir, export_dir, automatic=explicit is None)
    finally:
        shutil.rmtree(temporary_dir, ignore_errors=True)
    return export_dir
