import ast
import importlib
import pkgutil

import rpn_tf


def test_every_documented_name_imports_from_rpn_tf():
    for name in rpn_tf.__all__:
        assert getattr(rpn_tf, name) is not None, name
    # Names of the 0.1 API that user code imports.
    for name in ["AnchorConfig", "MultiLevelAnchorConfig", "AnchorMatcher", "ProposalConfig", "ProposalRecall",
                 "RPNModel", "RoiSampler", "RpnTargetEncoder", "anchors_inside_image", "box_ops", "clip_boxes",
                 "convert_boxes", "decode_deltas", "encode_deltas", "generate_proposals", "generate_anchors",
                 "iou_matrix", "label_anchors", "num_anchors", "sample_balanced"]:
        assert name in rpn_tf.__all__, name
    assert rpn_tf.box_ops.iou_matrix is rpn_tf.iou_matrix


def imported_modules(module_name):
    tree = ast.parse(open(importlib.import_module(module_name).__file__).read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def submodules(package_name):
    package = importlib.import_module(package_name)
    return [f"{package_name}.{info.name}" for info in pkgutil.iter_modules(package.__path__)]


def test_layers_only_import_downwards():
    """ops: pure TensorFlow (no Keras, nothing above); data: no modeling / serving / tools; modeling: no serving /
    tools; interop (checkpoints of other libraries → models): no serving / tools. (The models' ``from_torchvision``
    classmethods reach interop when called, not when imported.)"""
    rules = {"rpn_tf.ops": ("keras", "rpn_tf.data", "rpn_tf.modeling", "rpn_tf.serving", "rpn_tf.tools",
                            "rpn_tf.interop"),
             "rpn_tf.data": ("keras", "rpn_tf.modeling", "rpn_tf.serving", "rpn_tf.tools", "rpn_tf.interop"),
             "rpn_tf.modeling": ("rpn_tf.serving", "rpn_tf.tools"),
             "rpn_tf.interop": ("rpn_tf.serving", "rpn_tf.tools")}
    for package, forbidden in rules.items():
        for module in submodules(package):
            for name in imported_modules(module):
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), (module, name)


def test_rpn_tf_needs_no_matplotlib():
    """Keras imports matplotlib.pyplot whenever it is installed (with an unwritable home, its cache warnings then
    reach every process that only encodes targets): rpn-tf neither depends on it nor imports it, pictures
    included."""
    import importlib.metadata
    import subprocess
    import sys

    requirements = importlib.metadata.requires("rpn-tf") or []
    assert not [r for r in requirements if r.lower().startswith("matplotlib")]
    code = """
import importlib.util, sys
installed = importlib.util.find_spec("matplotlib") is not None
sys.modules["matplotlib"] = None  # any import of it fails
import rpn_tf, rpn_tf.evaluation, rpn_tf.tools.visualize, rpn_tf.tools.demo
stages = {"all anchors": {"iou0.5": 1.0}, "all decoded boxes": {"iou0.5": 0.9},
          **{f"top {n} {kind}": {"iou0.5": 0.1 * i} for i, n in enumerate((100, 300, 1000))
             for kind in ("by score (no NMS)", "after NMS")}}
rpn_tf.evaluation.plot_waterfall({"stages": stages, "num_gt": 3}, sys.argv[1])
print("OK", installed)
"""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        png = f"{folder}/w.png"
        result = subprocess.run([sys.executable, "-c", code, png], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    if result.stdout.split()[-1] == "False":  # not installed (as in a fresh install of rpn-tf): never imported
        check = subprocess.run([sys.executable, "-c", "import sys, rpn_tf; print('matplotlib' in sys.modules)"],
                               capture_output=True, text=True, timeout=300)
        assert check.stdout.strip().splitlines()[-1] == "False"
