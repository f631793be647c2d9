"""Native CPU kernels for target encoding, built on first use against the installed TensorFlow.

``rpn_targets.cc`` holds two TensorFlow ops — ``RpnTfLabelAndSample`` (IoU, the article's labeling and balanced
sampling in one pass) and ``RpnTfDenseTargets`` (dense labels and deltas of every anchor) — with outputs bit for bit
equal to the pure-TensorFlow ops of ``rpn_tf.ops.matching`` / ``sampling`` / ``targets`` (``tests/ops/
test_native.py``). ``RpnTargetEncoder`` uses them in its ``dataset.map`` transform (``TargetConfig.implementation``).

Build: the first ``load()`` in a fresh environment compiles the op library with the system C++ compiler (``$CXX``,
else ``c++`` / ``g++``; ~15 s) with ``tf.sysconfig``'s flags and caches it under ``$RPN_TF_CACHE_DIR`` (default
``$XDG_CACHE_HOME/rpn_tf`` or ``~/.cache/rpn_tf``), keyed by the source, the TensorFlow version, the flags and the
CPU (it is built for this CPU's vector instructions, ``-march=native``). The
library is written under a temporary name and renamed into place, so a killed build never leaves a file another
process would load. Without a compiler (or with ``RPN_TF_NATIVE=0``) ``load()`` returns ``None``, logs why once, and
the encoder uses the pure-TensorFlow ops: same targets, slower.

The ops have CPU kernels only and no XLA kernels; the encoder uses them only where it runs as a ``tf.data``
transform. A tf.data service worker must have the library loaded too (``rpn-tf data-service worker`` and
``rpn_tf.data.service.start_worker`` do it; in your own worker process call ``rpn_tf.ops.native.load()``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import tensorflow as tf

logger = logging.getLogger("rpn_tf.native")

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rpn_targets.cc")
# No FMA contraction: the kernels must round exactly as TensorFlow's separate element-wise ops do.
# -fno-trapping-math lets loops with a division vectorize (it changes no result, only floating-point traps);
# -march=native uses this CPU's vector width (the cache key includes the CPU's model and features).
CXX_FLAGS = ["-shared", "-fPIC", "-O3", "-ffp-contract=off", "-fno-trapping-math", "-march=native", "-w"]
ENV_SWITCH = "RPN_TF_NATIVE"
BUILD_TIMEOUT_S = 600

_lock = threading.Lock()
_state = {"module": None, "tried": False, "reason": None}


def cache_dir() -> str:
    """Where built libraries are kept: ``$RPN_TF_CACHE_DIR``, else ``$XDG_CACHE_HOME/rpn_tf`` or
    ``~/.cache/rpn_tf``."""
    if os.environ.get("RPN_TF_CACHE_DIR"):
        return os.environ["RPN_TF_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rpn_tf")


def _compiler():
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _build_flags():
    return tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()


def _cpu_fingerprint() -> str:
    """The CPU's architecture, model and feature flags: a library built with -march=native runs only there."""
    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo") as info:
            parts += sorted({line.strip() for line in info if line.startswith(("model name", "flags", "Features"))})
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def library_path() -> str:
    """The cached library's path for this source, TensorFlow, flags and CPU (it may not exist yet)."""
    digest = hashlib.sha256()
    digest.update(open(SOURCE, "rb").read())
    digest.update(_cpu_fingerprint().encode())
    digest.update(tf.__version__.encode())
    digest.update(" ".join(CXX_FLAGS + _build_flags()).encode())
    return os.path.join(cache_dir(), f"rpn_tf_native_{digest.hexdigest()[:16]}.so")


def build(path=None) -> str:
    """Compiles the op library to ``path`` (default ``library_path()``) and returns it; raises ``RuntimeError``
    with the compiler's message on failure."""
    path = path or library_path()
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set $CXX, or install g++)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _remove_stale_temporaries(os.path.dirname(path))
    # A unique temporary name in the same directory, renamed into place once complete.
    handle, temporary = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=os.path.dirname(path))
    os.close(handle)
    try:
        command = [compiler, *CXX_FLAGS, SOURCE, "-o", temporary, *_build_flags()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if result.returncode != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"compiling {SOURCE} failed ({' '.join(command[:2])} …):\n{tail}")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def _remove_stale_temporaries(directory, age_s=3600.0):
    """Removes ``.build-*`` files over an hour old: what builds killed part-way left (never loaded by anyone)."""
    import time

    for name in os.listdir(directory):
        if name.startswith(".build-"):
            try:
                if time.time() - os.path.getmtime(os.path.join(directory, name)) > age_s:
                    os.remove(os.path.join(directory, name))
            except OSError:
                pass


@tf.autograph.experimental.do_not_convert  # it is called while a dataset function is traced: plain Python
def load():
    """The loaded op module (``tf.load_op_library``), building it first if needed; ``None`` when native kernels are
    switched off (``RPN_TF_NATIVE=0``) or cannot be built (logged once; ``unavailable_reason()`` says why)."""
    with _lock:
        if _state["tried"]:
            return _state["module"]
        _state["tried"] = True
        if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
            _state["reason"] = f"switched off by {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
            return None
        try:
            path = library_path()
            if not os.path.exists(path):
                logger.warning("rpn-tf: building the native target-encoding ops once (cached in %s)",
                               os.path.dirname(path))
                build(path)
            _state["module"] = tf.load_op_library(path)
        except Exception as error:  # noqa: BLE001 — any failure means: use the TensorFlow ops
            _state["reason"] = f"{type(error).__name__}: {error}"
            logger.warning("rpn-tf: native target-encoding ops unavailable, using the TensorFlow ops (same targets, "
                           "slower): %s", _state["reason"])
        return _state["module"]


def available() -> bool:
    """Whether the native ops are loaded (building them if needed)."""
    return load() is not None


def unavailable_reason():
    """Why ``load()`` returned ``None`` (after a ``load()``), else ``None``."""
    load()
    return _state["reason"]
