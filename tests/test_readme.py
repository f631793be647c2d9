"""Every snippet of the README runs as written (in a scratch folder, in the README's order).

Python blocks run in one namespace per block; bash blocks run with ``bash -e``; blocks that use the demo's model
file run last. Skipped, with the reason: the
install commands (they are what ``.ci/run`` itself runs, and the demo has its own test), Docker, and the scaling-out
commands that need a cluster (their code is tested on loopback in tests/modeling/test_distributed.py and
tests/data/test_service.py), and the torchvision block that downloads a checkpoint (its commands run on a seeded
checkpoint in tests/interop/test_torchvision_convert.py). What a block needs from the world is prepared as the README says it: the demo's model
file (from the CLI block's training), a ``tree.jpg``, and TF Serving on localhost:8500 / 8501 (the loopback
stand-ins of tests/loopback.py, serving the exported model).
"""

import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = {"pip install": "the install commands are what .ci/run runs", "docker": "no Docker engine here",
        "TF_CONFIG": "needs a cluster", "data-service": "needs a cluster",
        "download.pytorch.org": "needs a network (torchvision's checkpoint) and COCO's val2017; the same commands on a "
                                "seeded checkpoint: tests/interop/test_torchvision_convert.py, tests/test_coco_eval.py"}


def blocks():
    text = open(os.path.join(ROOT, "README.md")).read()
    return [(language, code) for language, code in re.findall(r"```(python|bash)\n(.*?)```", text, re.S)]


def port_free(port):
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_readme_snippets_run_as_written(tmp_path, monkeypatch):
    from loopback import serve

    monkeypatch.chdir(tmp_path)
    os.symlink(os.path.join(ROOT, "export"), tmp_path / "export")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    ran = 0
    # Blocks that use the demo's model run after the CLI block has trained one.
    ordered = sorted(enumerate(blocks()), key=lambda item: "demo_output/rpn_deepforest.keras" in item[1][1])
    for index, (language, code) in ordered:
        reason = next((why for marker, why in SKIP.items() if marker in code), None)
        if reason:
            print(f"block {index} skipped: {reason}")
            continue
        if "demo_output/rpn_deepforest.keras" in code and not os.path.exists("demo_output/rpn_deepforest.keras"):
            os.makedirs("demo_output", exist_ok=True)
            shutil.copy("run/model.keras", "demo_output/rpn_deepforest.keras")  # the CLI block trained it
        if language == "bash":
            result = subprocess.run(["bash", "-e", "-c", code], env=env, capture_output=True, text=True, timeout=900)
            assert result.returncode == 0, f"README bash block {index} failed:\n{code}\n{result.stderr[-3000:]}"
        elif "localhost:8500" in code:
            if not (port_free(8500) and port_free(8501)):
                pytest.skip("ports 8500 / 8501 are taken: cannot stand in for TF Serving")
            tf.io.write_file("tree.jpg", tf.io.encode_jpeg(tf.zeros([120, 160, 3], tf.uint8) + 90))
            with serve(os.path.join("serving", "rpn", "1"), 8500, 8501):
                exec(compile(code, f"README block {index}", "exec"), {})
        else:
            exec(compile(code, f"README block {index}", "exec"), {})
        ran += 1
    assert ran >= 6
