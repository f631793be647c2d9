"""The tf.data service: run the encoder's ``ds.map`` on remote input workers (``tf.data.experimental.service``).

A training job whose input (decoding, tiling, target encoding) outgrows its hosts moves that work to a pool of
tf.data workers: a *dispatcher* process and any number of *worker* processes, started anywhere (``rpn-tf
data-service dispatcher|worker``, or ``tf.data.experimental.service.DispatchServer`` / ``WorkerServer`` in your
own processes). The dataset's graph is sent to the workers; the trainer reads the finished elements over gRPC. The
encoder's graph holds core TensorFlow ops only by default, so the workers need TensorFlow only (any TensorFlow
worker, ``tf.data.experimental.service.WorkerServer`` included). With the native target ops opted in
(``implementation="native"`` or ``rpn_tf.ops.native.enable()``), the workers must have them registered: ``start_worker``
/ ``rpn-tf data-service worker`` load them when the switch is on (``RPN_TF_NATIVE=1``); a worker process of your
own calls ``rpn_tf.ops.native.load()`` first.

Processing modes:
  ``"parallel_epochs"``   every worker produces the whole dataset (shuffle it, with a different seed per worker);
                          an epoch has ``workers ×`` the examples. For large datasets of interchangeable examples.
  ``"distributed_epoch"`` the dispatcher hands out splits of the source (files of a TFRecord dataset, slices of
                          ``from_tensor_slices``): every example arrives exactly once per epoch. The source must be
                          splittable (no ``from_generator``).
Targets are identical to the local pipeline's for a seeded encoder (the sample is a function of the GT boxes).
"""

from __future__ import annotations

import re

import tensorflow as tf

PROCESSING_MODES = {
    "parallel_epochs": tf.data.experimental.service.ShardingPolicy.OFF,
    "distributed_epoch": tf.data.experimental.service.ShardingPolicy.DYNAMIC,
}
_ADDRESS = re.compile(r"^(grpc|grpc\+loas)://[^:/\s]+:\d+$")


def distribute(dataset, service, processing_mode="parallel_epochs", job_name=None):
    """``dataset`` read through the tf.data service at ``service`` (``"grpc://HOST:PORT"``, the dispatcher).

    Everything ``dataset`` does (decoding, ``map(encoder)``, batching) runs on the service's workers. ``job_name``
    lets several trainers share one job (each gets a part of the elements).
    """
    if not isinstance(service, str) or not _ADDRESS.match(service):
        raise ValueError(f"the tf.data service address must look like grpc://HOST:PORT (the dispatcher), got "
                         f"{service!r}")
    if processing_mode not in PROCESSING_MODES:
        raise ValueError(f"processing_mode must be one of {sorted(PROCESSING_MODES)}, got {processing_mode!r}")
    return dataset.apply(tf.data.experimental.service.distribute(
        processing_mode=PROCESSING_MODES[processing_mode], service=service, job_name=job_name))


def start_dispatcher(port=0, work_dir=None):
    """A ``DispatchServer`` on ``port`` (0: a free one), fault tolerant when ``work_dir`` is given; its address is
    ``server.target`` (``grpc://localhost:PORT``)."""
    config = tf.data.experimental.service.DispatcherConfig(port=port, work_dir=work_dir,
                                                           fault_tolerant_mode=work_dir is not None)
    return tf.data.experimental.service.DispatchServer(config)


def start_worker(dispatcher_address, port=0, worker_address=None):
    """A ``WorkerServer`` registered with the dispatcher at ``dispatcher_address`` (``HOST:PORT`` or
    ``grpc://HOST:PORT``); ``worker_address`` is how the trainers reach it (default ``localhost:PORT``)."""
    from rpn_tf.ops import native

    if native.enabled():  # the trainers' graphs may hold the native target ops: register them here
        native.require()
    address = dispatcher_address.split("://", 1)[-1]
    config = tf.data.experimental.service.WorkerConfig(dispatcher_address=address, port=port,
                                                       worker_address=worker_address)
    return tf.data.experimental.service.WorkerServer(config)


__all__ = ["PROCESSING_MODES", "distribute", "start_dispatcher", "start_worker"]
