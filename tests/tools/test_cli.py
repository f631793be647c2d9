import json
import os
import subprocess
import sys

import io

import numpy as np
import pytest
from PIL import Image
import tensorflow as tf

from rpn_tf.tools import cli, visualize
from rpn_tf.data import deepforest

SMALL = ["--preset", "deepforest", "--data", "OSBS_029", "--tile", "200", "--tile-overlap", "50"]
MODEL = ["--image-size", "200", "200", "--head-channels", "16"]
EVAL_DATA = ["--format", "deepforest", "--data", "OSBS_029", "--tile", "200", "--tile-overlap", "50"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli.main(["train", *SMALL, *MODEL, "--epochs", "1", "--batch-size", "3", "--out", str(out)]) == 0
    for name in ("model.keras", "checkpoint.keras"):
        assert (out / name).exists()
    assert any((out / "logs").rglob("events.out.tfevents.*"))
    return out


def test_train_with_validation_keeps_the_best_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *SMALL, *MODEL, "--epochs", "2", "--batch-size", "3", "--out", str(out),
                     "--val-data", "OSBS_029"]) == 0
    assert "val_recall@300_iou0.5" in capsys.readouterr().out and (out / "checkpoint.keras").exists()


def test_evaluate(trained, tmp_path, capsys):
    results_path = tmp_path / "results.json"
    assert cli.main(["evaluate", str(trained / "model.keras"), *EVAL_DATA, "--json", str(results_path)]) == 0
    results = json.loads(results_path.read_text())
    for key in ("recall@100_iou0.5", "recall@300_iou0.7", "ar@100", "ar@300", "ar@1000"):
        assert 0.0 <= results[key] <= 1.0
    assert results["recall@1000_iou0.5"] >= results["recall@100_iou0.5"]
    assert "ar@300:" in capsys.readouterr().out


def test_evaluate_diagnose_prints_the_waterfall_and_writes_a_plot(trained, tmp_path, capsys):
    plot, results_path = tmp_path / "waterfall.png", tmp_path / "results.json"
    assert cli.main(["evaluate", str(trained / "model.keras"), *EVAL_DATA, "--diagnose", "--plot", str(plot),
                     "--json", str(results_path)]) == 0
    out = capsys.readouterr().out
    for stage in ("all anchors", "all decoded boxes", "top 300 by score (no NMS)", "top 1000 after NMS"):
        assert stage in out
    assert "objectness of positive anchors" in out and plot.read_bytes()[:4] == b"\x89PNG"
    waterfall = json.loads(results_path.read_text())["waterfall"]
    assert waterfall["stages"]["all anchors"]["iou0.5"] >= waterfall["stages"]["top 100 after NMS"]["iou0.5"]


def test_export_and_predict(trained, tmp_path, capsys):
    base = tmp_path / "serving"
    assert cli.main(["export", str(trained / "model.keras"), "--base-dir", str(base)]) == 0
    assert (base / "rpn" / "1" / "saved_model.pb").exists()
    images = tmp_path / "images"
    images.mkdir()
    image, _ = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    tf.io.write_file(str(images / "a.jpg"), tf.io.encode_jpeg(image))
    tf.io.write_file(str(images / "b.png"), tf.io.encode_png(image[:150, :300]))
    out = tmp_path / "predictions"
    assert cli.main(["predict", str(trained / "model.keras"), str(images), "--out", str(out), "--top-n", "10"]) == 0
    for stem in ("a", "b"):
        assert (out / f"{stem}_proposals.png").read_bytes()[:4] == b"\x89PNG"
        result = json.loads((out / f"{stem}_proposals.json").read_text())
        assert 0 < len(result["boxes_yxyx"]) <= 10
    b_boxes = json.loads((out / "b_proposals.json").read_text())["boxes_yxyx"]
    assert all(box[2] <= 150 and box[3] <= 300 for box in b_boxes)  # original image pixels
    assert cli.main(["predict", str(trained / "model.keras"), str(tmp_path / "missing.jpg")]) == 2
    assert "no images found" in capsys.readouterr().err
    # One unreadable image in the folder: stop naming it, or skip it with a named warning.
    (images / "c.jpg").write_bytes(b"\xff\xd8\xff this is not a whole jpeg")
    assert cli.main(["predict", str(trained / "model.keras"), str(images), "--out", str(out)]) == 2
    assert "c.jpg: not a readable image" in capsys.readouterr().err
    assert cli.main(["predict", str(trained / "model.keras"), str(images), "--out", str(out), "--skip-errors"]) == 0
    err = capsys.readouterr().err
    assert "warning: skipped" in err and "c.jpg" in err and "skipped 1 of 3 images" in err


def test_visualize_targets(tmp_path, capsys):
    output = tmp_path / "targets.png"
    assert cli.main(["visualize-targets", "--preset", "deepforest", "--data", "OSBS_029", "--image-size", "300", "300",
                     "--output", str(output)]) == 0
    picture = np.asarray(Image.open(output))
    assert picture.shape == (600, 600, 3)  # the 300 px training canvas, enlarged 2x for reading
    assert "positive (red)" in capsys.readouterr().out
    assert_legend(picture, [visualize.BLUE, visualize.RED, visualize.GREEN])


def assert_legend(picture, colours):
    """The legend: a black box in the top-left corner with one swatch per set, in order."""
    assert np.all(picture[7, 7] == 0)
    for row, colour in enumerate(colours):
        y = int(6 * 1.5 + row * 16) + 6
        assert tuple(picture[y, 18]) == colour, (row, tuple(picture[y, 18]))


def test_pictures_have_thick_boxes_a_legend_and_rank_shading():
    image = np.full((100, 150, 3), 128, np.uint8)
    boxes = np.array([[10, 10, 50, 60], [40, 70, 90, 140]], np.float32)
    picture = np.asarray(Image.open(io.BytesIO(visualize.proposals_picture(image, boxes, [0.9, 0.1],
                                                                           boxes[:1]))))
    assert picture.shape == (400, 600, 3)  # enlarged 4x: the longer side reaches 600 px
    assert_legend(picture, [visualize.YELLOW, visualize.GREEN])
    # The lower-scored proposal (second box) is drawn dimmer, 2 px wide at the output size.
    left_edge = picture[200:320, 70 * 4 - 1:70 * 4 + 3]
    dim = np.round(np.array(visualize.YELLOW) * 0.35).astype(np.uint8)
    assert (np.all(left_edge == dim, axis=-1).sum(axis=1) >= 2).all()


def test_model_arguments_build_fpn_and_resize_policy():
    args = cli.resolve(cli.build_parser().parse_args(["train", "--format", "voc", "--backbone", "simple_fpn",
                                                      "--image-size", "64", "96", "--resize", "shorter_side",
                                                      "--head-channels", "8"]))
    model = cli.build_model(args)
    assert model.backbone_strides == (4, 8, 16, 32, 64) and model.resize.policy == "shorter_side"
    assert model.target_encoder.resize == model.resize


def test_presets_and_derived_stride():
    article = cli.resolve(cli.build_parser().parse_args(["train", "--format", "voc"]))
    assert (article.backbone, article.image_size, article.stride, article.scales, article.ratios) == \
        ("vgg16", [800, 800], 16, [8.0, 16.0, 32.0], [0.5, 1.0, 2.0])
    assert (article.optimizer, article.learning_rate) == ("sgd", 1e-3)
    forest = cli.resolve(cli.build_parser().parse_args(["train", "--preset", "deepforest"]))
    assert (forest.format, forest.backbone, forest.stride, forest.tile) == ("deepforest", "simple", 8, 400)
    # Another backbone than the preset's takes its own stride: no "stride 16 but anchor stride 8" crash.
    other = cli.resolve(cli.build_parser().parse_args(["train", "--preset", "deepforest", "--backbone", "vgg16"]))
    assert other.stride == 16


def run_cli(*argv):
    """``rpn-tf ARGV`` in a subprocess: (exit status, stdout, stderr)."""
    script = os.path.join(os.path.dirname(sys.executable), "rpn-tf")  # the installed command
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "rpn_tf.tools.cli"]
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}  # a user's shell
    result = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=300, env=env)
    return result.returncode, result.stdout, result.stderr


def test_help_is_plain_and_quiet():
    status, out, err = run_cli("train", "--help")
    assert status == 0 and err == ""
    assert "--preset" in out and "(default: 10)" in out and "``" not in out
    assert not any(marker in out for marker in ("I0000", "W0000", "oneDNN", "tensorflow"))


@pytest.mark.parametrize("command", [["-m", "rpn_tf.tools.cli"], [os.path.join("rpn_tf", "tools", "cli.py")]])
def test_help_through_python_does_not_import_tensorflow(command):
    result = subprocess.run([sys.executable, "-X", "importtime", *command, "--help"], capture_output=True, text=True,
                            timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert result.returncode == 0 and "usage: rpn-tf" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.count("|") == 2}
    assert "rpn_tf" in imported and not {"tensorflow", "keras", "matplotlib"} & imported


@pytest.mark.parametrize("argv,message", [
    (["train", "--format", "voc", "--data", "/no/such/folder"], "no such folder: /no/such/folder"),
    (["train", "--data", "x"], "--format is required"),
    (["train", "--format", "voc", "--backbone", "vgg61"], "invalid choice: 'vgg61'"),
    (["train", "--format", "voc", "--data", ".", "--weights", "/no/weights.h5"], "--weights: no such file"),
    (["evaluate", "/no/model.keras", "--format", "voc", "--data", "."], "no such model file"),
    (["visualize-targets", "--preset", "deepforest", "--data", "OSBS_029", "--index", "5"], "--index 5 is past the end"),
    (["visualize-targets", "--format", "coco", "--data", __file__], "--images is required"),
])
def test_ordinary_mistakes_give_one_line_and_exit_2(argv, message):
    status, out, err = run_cli(*argv)
    assert status == 2 and message in err, (status, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_keras_file_that_is_not_an_rpn_model_is_named(tmp_path):
    import keras

    path = str(tmp_path / "other.keras")
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(path)
    status, _, err = run_cli("export", path, "--base-dir", str(tmp_path / "serving"))
    assert status == 2 and "Sequential" in err and "RPNModel" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command,argv", [
    ("command_evaluate", ["evaluate", "m.keras", "--format", "deepforest"]),
    ("command_export", ["export", "m.keras", "--base-dir", "serving"]),
    ("command_predict", ["predict", "m.keras", "photo.jpg"]),
])
@pytest.mark.parametrize("terminated", [False, True])
def test_an_interrupted_command_ends_in_one_line_with_130_or_143(monkeypatch, capsys, command, argv, terminated):
    def interrupted(args):
        raise cli.Terminated() if terminated else KeyboardInterrupt()

    monkeypatch.setattr(cli, command, interrupted)
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == (143 if terminated else 130)
    assert err.count("\n") == 1 and err.startswith(f"interrupted by {'SIGTERM' if terminated else 'Ctrl-C'} "
                                                   f"during {argv[0]}: ")


def test_faster_rcnn_train_evaluate_export_predict(tmp_path, capsys):
    out = tmp_path / "detector"
    assert cli.main(["train", *SMALL, *MODEL, "--model", "faster_rcnn", "--representation-size", "32",
                     "--epochs", "1", "--batch-size", "3", "--out", str(out)]) == 0
    model = str(out / "model.keras")
    capsys.readouterr()
    assert cli.main(["evaluate", model, *EVAL_DATA, "--top-n", "100", "--json", str(tmp_path / "e.json"),
                     "--diagnose", "--plot", str(tmp_path / "w.png")]) == 0
    printed = capsys.readouterr().out
    assert "COCO detection metrics" in printed and "AP50:" in printed and "AR@100:" in printed
    assert "box-area buckets, no crowd regions" in printed  # not a COCO JSON: the figures say how they were made
    assert "recall waterfall" in printed and (tmp_path / "w.png").stat().st_size > 0  # of the detector's RPN
    results = json.loads((tmp_path / "e.json").read_text())
    assert set(results) == {"detection", "proposals", "waterfall", "ground_truth"}
    assert 0.0 <= results["detection"]["AP50"] <= 1.0 and "box-area" in results["ground_truth"]
    base = tmp_path / "serving"
    assert cli.main(["export", model, "--base-dir", str(base), "--name", "detector"]) == 0
    assert (base / "detector" / "1" / "saved_model.pb").exists()
    image, _ = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    photo = tmp_path / "photo.png"
    tf.io.write_file(str(photo), tf.io.encode_png(image[:150, :300]))
    assert cli.main(["predict", model, str(photo), "--out", str(tmp_path / "pred"), "--top-n", "5"]) == 0
    record = json.loads((tmp_path / "pred" / "photo_detections.json").read_text())
    assert len(record["boxes_yxyx"]) == len(record["classes"]) <= 5
    assert all(box[2] <= 150 and box[3] <= 300 for box in record["boxes_yxyx"])


def test_faster_rcnn_needs_its_classes():
    status, _, err = run_cli("train", "--format", "voc", "--data", ".", "--model", "faster_rcnn")
    assert status == 2 and "--num-classes is required" in err


def test_demo_forwards_its_options(monkeypatch):
    from rpn_tf.tools import demo

    seen = []
    monkeypatch.setattr(demo, "main", seen.append)
    assert cli.main(["demo", "--out", "d", "--epochs", "2", "--detector-epochs", "0", "--seed", "2"]) == 0
    assert seen == [["--out", "d", "--epochs", "2", "--detector-epochs", "0", "--seed", "2"]]


def test_a_corrupt_tfrecord_ends_train_in_one_data_loss_line_without_tensorflows_internals(tmp_path):
    from rpn_tf.data import adapters

    rng = np.random.default_rng(1)
    examples = [adapters.od_example(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), [[0.1, 0.1, 0.6, 0.6]], [1],
                                    filename=f"{i}.png").SerializeToString() for i in range(3)]
    path = tmp_path / "rot.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example)
    data = bytearray(path.read_bytes())
    data[16 + len(examples[0]) + 12 + 30] ^= 0xFF  # one flipped byte in record 1
    path.write_bytes(bytes(data))
    status, out, err = run_cli("train", "--format", "tfrecord", "--data", str(path), "--image-size", "64", "64",
                               "--backbone", "simple", "--epochs", "1", "--batch-size", "1", "--out",
                               str(tmp_path / "run"))
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and lines == [f"error: TFRecord file {path} is truncated or corrupt: record 1 at byte "
                                     f"{16 + len(examples[0])} (of {len(data)}) cannot be read; the 1 records before "
                                     "it were read"], err
    assert "function_node" not in err and "Graph execution" not in err


START_UP_LINES = ("cuInit", "oneDNN", "cpu_feature_guard", "absl::InitializeLog", "cuda drivers")


def test_commands_and_the_demo_start_without_tensorflows_start_up_lines(tmp_path):
    """On a machine without a GPU TensorFlow prints oneDNN / CUDA stub / CPU feature lines when imported and
    "failed call to cuInit" at its first op; the CLI, the demo and the recipe (run as modules too) hide them."""
    status, out, err = run_cli("visualize-targets", "--preset", "deepforest", "--data", "OSBS_029", "--image-size",
                               "128", "128", "--output", str(tmp_path / "targets.png"))  # runs ops
    assert status == 0 and not any(marker in err for marker in START_UP_LINES), err
    for module in ("rpn_tf.tools.demo", "rpn_tf.tools.train_deepforest"):
        env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                                timeout=300, env=env)
        assert result.returncode == 0 and not any(marker in result.stderr for marker in START_UP_LINES), \
            (module, result.stderr)
