"""Optional native CPU kernels for target encoding: an explicit opt-in, built once per machine and cached.

By default rpn-tf computes targets with core TensorFlow ops only: nothing here runs, no compiler is looked for, and
a dataset's graph holds only ops every TensorFlow has (GPU in-graph labeling, XLA, tf.data service workers with
TensorFlow only, any CPU). The native kernels are a fast path for CPU-bound input hosts (several times the
TensorFlow ops' throughput in ``dataset.map``; ``docs/performance.md``), with targets equal bit for bit.

``rpn_targets.cc`` holds three TensorFlow ops — ``RpnTfLabelAndSample`` (IoU, the article's labeling and balanced
sampling in one pass), ``RpnTfDenseTargets`` and ``RpnTfSparseTargets`` — with outputs equal to the pure-TensorFlow
ops of ``rpn_tf.ops.matching`` / ``sampling`` / ``targets`` (``tests/ops/test_native.py``).

Opting in:
  * per encoder: ``RpnTargetEncoder(..., implementation="native")`` (``TargetConfig.implementation``);
  * process-wide: ``rpn_tf.ops.native.enable()`` or the environment variable ``RPN_TF_NATIVE=1``: encoders left at
    ``implementation="auto"`` then use the kernels in their ``dataset.map`` transform.
Either way, when the kernels cannot be had the encoder raises a one-line ``RuntimeError`` saying why.

Build: ``rpn-tf native build`` (ahead of time: Docker images, clusters) or the first use compiles the library with
the system C++ compiler (``$CXX``, else ``c++`` / ``g++`` / ``clang++``; ~10 s) against the installed TensorFlow's
headers with portable instruction-set flags (``-mavx2 -mfma`` on x86-64 CPUs that have them, the architecture's
baseline elsewhere — never ``-march=native``) and caches it under ``$RPN_TF_CACHE_DIR`` (default
``$XDG_CACHE_HOME/rpn_tf`` or ``~/.cache/rpn_tf``), keyed by the source, the TensorFlow version, the compiler and the
flags. One build per machine: a file lock makes concurrent processes (N tf.data workers) wait for the one that
builds. The library is written under a temporary name and renamed into place, so a killed build never leaves a file
another process would load. A failed build is remembered in the cache (``*.failed``; the compiler's output in
``*.log`` and in DEBUG logging, never on the terminal): later processes do not retry and say so in one line;
``rpn-tf native build --force`` retries (a timeout, a compiler killed by a signal or an OS error is not remembered:
the next process tries again). ``rpn-tf native status`` reports the state; ``rpn-tf native clean`` removes the
libraries of other TensorFlow versions or sources. A library built ahead into a read-only cache loads as it is.

The ops have CPU kernels only and no XLA kernels; the encoder uses them only where it runs as a ``tf.data``
transform. A tf.data service worker must load the library to run a dataset that holds them
(``rpn_tf.data.service.start_worker`` does it when the switch is on; a worker of your own calls ``load()``).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time

import tensorflow as tf

logger = logging.getLogger("rpn_tf.native")

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rpn_targets.cc")
# No FMA contraction: the kernels must round exactly as TensorFlow's separate element-wise ops do.
# -fno-trapping-math lets loops with a division vectorize (it changes no result, only floating-point traps).
CXX_FLAGS = ["-shared", "-fPIC", "-O3", "-ffp-contract=off", "-fno-trapping-math", "-w"]
ENV_SWITCH = "RPN_TF_NATIVE"
PREFIX = "rpn_tf_native_"
BUILD_TIMEOUT_S = 600
_TRUE = ("1", "true", "yes", "on")

_lock = threading.Lock()
_state = {"module": None, "tried": False, "reason": None, "enabled": None}


class NativeUnavailable(RuntimeError):
    """The native kernels cannot be had; the message is one line and says why."""


# ----------------------------------------------------------------------------------------------- the switch


def enable(on=True):
    """Switches the native kernels on (or off) for this process: encoders with ``implementation="auto"`` then use
    them in their ``dataset.map`` transform. Overrides ``$RPN_TF_NATIVE`` (``None``: back to the variable). Call it
    before the datasets are built (traced)."""
    _state["enabled"] = None if on is None else bool(on)


def enabled() -> bool:
    """Whether the process-wide switch is on: ``enable()``, else ``$RPN_TF_NATIVE`` in 1 / true / yes / on."""
    if _state["enabled"] is not None:
        return _state["enabled"]
    return os.environ.get(ENV_SWITCH, "").strip().lower() in _TRUE


# ----------------------------------------------------------------------------------------------- build settings


def cache_dir() -> str:
    """Where built libraries are kept: ``$RPN_TF_CACHE_DIR``, else ``$XDG_CACHE_HOME/rpn_tf`` or
    ``~/.cache/rpn_tf``."""
    if os.environ.get("RPN_TF_CACHE_DIR"):
        return os.environ["RPN_TF_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rpn_tf")


def compiler():
    """The C++ compiler's path (``$CXX``, else ``c++`` / ``g++`` / ``clang++`` on the PATH), or ``None``."""
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


_compiler_ids = {}


def compiler_id(path) -> str:
    """The compiler's resolved path and the first line of ``--version`` (part of the cache key)."""
    if path not in _compiler_ids:
        try:
            result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
            first = (result.stdout or result.stderr).strip().splitlines()
            version = first[0] if first and result.returncode == 0 else f"unknown (exit {result.returncode})"
        except (OSError, subprocess.SubprocessError) as error:
            version = f"unknown ({type(error).__name__})"
        _compiler_ids[path] = f"{os.path.realpath(path)}: {version}"
    return _compiler_ids[path]


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_flags():
    """Instruction-set flags: ``-mavx2 -mfma`` on x86-64 CPUs that have both (the kernels' loops vectorize 8 wide),
    nothing (the architecture's baseline) elsewhere. Never ``-march=native``: it enables whatever the build machine
    has (AVX512-FP16 breaks TensorFlow's bundled Eigen under gcc 12) and ties the library to that CPU."""
    if platform.machine().lower() in ("x86_64", "amd64") and {"avx2", "fma"} <= _cpu_flags():
        return ["-mavx2", "-mfma"]
    return []


def _tf_flags():
    return tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()


def settings(compiler_path=None) -> dict:
    """The build's inputs: source digest, TensorFlow version, compiler, flags — and the cache key made of them."""
    compiler_path = compiler_path or compiler()
    with open(SOURCE, "rb") as source:
        source_sha = hashlib.sha256(source.read()).hexdigest()
    flags = CXX_FLAGS + isa_flags()
    info = {"source_sha256": source_sha, "tensorflow": tf.__version__, "machine": platform.machine(),
            "compiler": compiler_id(compiler_path) if compiler_path else None, "compiler_path": compiler_path,
            "flags": flags, "tf_flags": _tf_flags()}
    digest = hashlib.sha256(json.dumps({k: v for k, v in info.items() if k != "compiler_path"},
                                       sort_keys=True).encode())
    info["key"] = digest.hexdigest()[:16]
    return info


def library_path(info=None) -> str:
    """The cached library's path for this source, TensorFlow, compiler and flags (it may not exist yet)."""
    info = info or settings()
    return os.path.join(cache_dir(), f"{PREFIX}{info['key']}.so")


def _sidecar(path, suffix):
    return path[:-len(".so")] + suffix


# ----------------------------------------------------------------------------------------------- building


@contextlib.contextmanager
def _file_lock(path):
    """An exclusive lock on ``path`` across processes (``fcntl.flock``; released by the kernel if the holder
    dies). Where ``fcntl`` does not exist (Windows) it is a no-op: the atomic rename still keeps builds safe."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    try:
        handle = open(path, "a")
    except OSError:  # a cache we cannot write a lock into: building there fails anyway, with its own message
        yield
        return
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except OSError:  # a file system without flock (some NFS): the atomic rename still keeps builds safe
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _failure(path):
    """The remembered failure of this build (a dict with ``reason`` and ``log``), or ``None``."""
    try:
        with open(_sidecar(path, ".failed")) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _write_atomically(path, text):
    directory = os.path.dirname(path)
    handle, temporary = tempfile.mkstemp(prefix=".build-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _compile(info, path):
    """Runs the compiler into a temporary file and renames it to ``path``; on failure writes the log and the
    ``.failed`` marker and raises ``NativeUnavailable`` with one line."""
    compiler_path = info["compiler_path"]
    log_path = _sidecar(path, ".log")
    if compiler_path is None:
        reason = "no C++ compiler found (set $CXX, or install g++)"
        _write_atomically(_sidecar(path, ".failed"), json.dumps({"reason": reason, "log": None, "time": time.time()}))
        raise NativeUnavailable(reason)
    handle, temporary = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=os.path.dirname(path))
    os.close(handle)
    command = [compiler_path, *info["flags"], SOURCE, "-o", temporary, *info["tf_flags"]]
    try:
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
            output, status = (result.stdout or "") + (result.stderr or ""), f"exit status {result.returncode}"
            ok = result.returncode == 0 and os.path.getsize(temporary) > 0
            # Remembered only when the compiler itself rejected the build (exit status > 0): a timeout, a compiler
            # killed by a signal (e.g. out of memory) or an OS error may pass, so the next process tries again.
            lasting = result.returncode > 0
        except (OSError, subprocess.SubprocessError) as error:
            output, status, ok, lasting = f"{type(error).__name__}: {error}", type(error).__name__, False, False
        _write_atomically(log_path, " ".join(command) + "\n\n" + output)
        if output.strip():
            logger.debug("rpn-tf native build output (%s):\n%s", status, output)
        if not ok:
            reason = f"compiling {os.path.basename(SOURCE)} with {os.path.basename(compiler_path)} failed " \
                     f"({status}; compiler output in {log_path})"
            if lasting:
                _write_atomically(_sidecar(path, ".failed"), json.dumps({"reason": reason, "log": log_path,
                                                                          "time": time.time()}))
            raise NativeUnavailable(reason)
        meta = {k: v for k, v in info.items() if k != "tf_flags"}
        _write_atomically(_sidecar(path, ".json"), json.dumps({**meta, "built": time.time()}, indent=1))
        os.replace(temporary, path)  # last: the library's existence means a complete build
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def build(force=False, info=None) -> str:
    """Builds the library into the cache unless it is there (``force``: also retry a remembered failure) and
    returns its path; raises ``NativeUnavailable`` (one line) when it cannot be built. Safe to call from many
    processes at once: one builds, the others wait for it."""
    info = info or settings()
    path = library_path(info)
    if os.path.exists(path) and not force:  # built (perhaps into a read-only cache, e.g. in a Docker image)
        return path
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    with _file_lock(_sidecar(path, ".lock")):
        if os.path.exists(path) and not force:
            return path
        failure = _failure(path)
        if failure and not force:
            raise NativeUnavailable(f"{failure['reason']}; remembered from an earlier attempt — "
                                    f"`rpn-tf native build --force` retries")
        _remove_stale_temporaries(directory)
        for suffix in (".failed", ".log"):
            with contextlib.suppress(OSError):
                os.remove(_sidecar(path, suffix))
        logger.info("rpn-tf: building the native target-encoding ops (cached in %s)", directory)
        _compile(info, path)
    return path


def _remove_stale_temporaries(directory, age_s=3600.0):
    """Removes ``.build-*`` files over an hour old: what builds killed part-way left (never loaded by anyone)."""
    for name in os.listdir(directory):
        if name.startswith(".build-"):
            with contextlib.suppress(OSError):
                if time.time() - os.path.getmtime(os.path.join(directory, name)) > age_s:
                    os.remove(os.path.join(directory, name))


def cached_builds():
    """``[(path, metadata or None)]`` of the libraries and remembered failures in the cache."""
    entries = []
    for path in sorted(glob.glob(os.path.join(cache_dir(), PREFIX + "*.so")) +
                       glob.glob(os.path.join(cache_dir(), PREFIX + "*.failed"))):
        library = path if path.endswith(".so") else path[:-len(".failed")] + ".so"
        if path.endswith(".failed") and os.path.exists(library):
            continue
        try:
            with open(_sidecar(library, ".json")) as handle:
                meta = json.load(handle)
        except (OSError, ValueError):
            meta = None
        entries.append((library, meta))
    return entries


def clean(info=None, everything=False):
    """Removes cached libraries (and their metadata, logs and failure markers; lock files stay, another process may
    hold one) built from another source or for another TensorFlow version than this one (``everything``: all of
    them); returns the removed libraries' paths. Run by ``rpn-tf native clean``, never automatically: a cache
    shared by environments of several TensorFlow versions keeps each one's library until asked."""
    info = info or settings()
    removed = []
    for library, meta in cached_builds():
        current = library == library_path(info)
        stale = meta is None or meta.get("source_sha256") != info["source_sha256"] or \
            meta.get("tensorflow") != info["tensorflow"]
        if everything or (stale and not current):
            for suffix in (".so", ".json", ".failed", ".log"):
                with contextlib.suppress(OSError):
                    os.remove(_sidecar(library, suffix))
            removed.append(library)
    return removed


# ----------------------------------------------------------------------------------------------- loading


@tf.autograph.experimental.do_not_convert  # it is called while a dataset function is traced: plain Python
def load():
    """The loaded op module (``tf.load_op_library``), building it first if needed, or ``None`` when it cannot be
    had (``unavailable_reason()`` says why; DEBUG logging has the details). Tried once per process."""
    with _lock:
        if _state["tried"]:
            return _state["module"]
        _state["tried"] = True
        try:
            _state["module"] = tf.load_op_library(build())
        except Exception as error:  # noqa: BLE001 — any failure means: no native kernels, said in one line
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            _state["reason"] = message if isinstance(error, NativeUnavailable) else \
                f"{type(error).__name__}: {message}"
            logger.debug("rpn-tf native ops unavailable: %s", _state["reason"])
        return _state["module"]


def require():
    """The loaded op module, or a one-line ``RuntimeError`` saying why the native kernels are unavailable."""
    module = load()
    if module is None:
        raise RuntimeError(f"rpn-tf native target ops unavailable: {_state['reason']}")
    return module


def available() -> bool:
    """Whether the native ops are loaded (building them if needed)."""
    return load() is not None


def unavailable_reason():
    """Why ``load()`` returned ``None`` (after a ``load()``), else ``None``."""
    load()
    return _state["reason"]


def status() -> dict:
    """What ``rpn-tf native status`` prints: the switch, compiler, flags, library and its state, other builds."""
    info = settings()
    path = library_path(info)
    failure = _failure(path)
    state = "built" if os.path.exists(path) else (f"failed: {failure['reason']}" if failure else "not built")
    return {"switch": f"{'on' if enabled() else 'off'} (rpn_tf.ops.native.enable() or {ENV_SWITCH}=1)",
            "state": state, "library": path, "compiler": info["compiler"] or "none found",
            "flags": " ".join(info["flags"]), "tensorflow": info["tensorflow"], "cache": cache_dir(),
            "other builds": [p for p, _ in cached_builds() if p != path]}
