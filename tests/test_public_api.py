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
    tools."""
    rules = {"rpn_tf.ops": ("keras", "rpn_tf.data", "rpn_tf.modeling", "rpn_tf.serving", "rpn_tf.tools"),
             "rpn_tf.data": ("keras", "rpn_tf.modeling", "rpn_tf.serving", "rpn_tf.tools"),
             "rpn_tf.modeling": ("rpn_tf.serving", "rpn_tf.tools")}
    for package, forbidden in rules.items():
        for module in submodules(package):
            for name in imported_modules(module):
                assert not any(name == f or name.startswith(f + ".") for f in forbidden), (module, name)
