import json

import pytest
import tensorflow as tf

from rpn_tf.tools import cli
from rpn_tf.data import deepforest

SMALL = ["--format", "deepforest", "--data", "OSBS_029", "--tile", "200", "--tile-overlap", "50"]
MODEL = ["--image-size", "200", "200", "--stride", "8", "--head-channels", "16"]


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
    assert cli.main(["evaluate", str(trained / "model.keras"), *SMALL, "--json", str(results_path)]) == 0
    results = json.loads(results_path.read_text())
    for key in ("recall@100_iou0.5", "recall@300_iou0.7", "ar@100", "ar@300", "ar@1000"):
        assert 0.0 <= results[key] <= 1.0
    assert results["recall@1000_iou0.5"] >= results["recall@100_iou0.5"]
    assert "ar@300:" in capsys.readouterr().out


def test_evaluate_diagnose_prints_the_waterfall_and_writes_a_plot(trained, tmp_path, capsys):
    plot, results_path = tmp_path / "waterfall.png", tmp_path / "results.json"
    assert cli.main(["evaluate", str(trained / "model.keras"), *SMALL, "--diagnose", "--plot", str(plot),
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
    with pytest.raises(SystemExit, match="no images"):
        cli.main(["predict", str(trained / "model.keras"), str(tmp_path / "missing.jpg")])
    # One unreadable image in the folder: stop naming it, or skip it with a named warning.
    (images / "c.jpg").write_bytes(b"\xff\xd8\xff this is not a whole jpeg")
    assert cli.main(["predict", str(trained / "model.keras"), str(images), "--out", str(out)]) == 2
    assert "c.jpg: not a readable image" in capsys.readouterr().err
    assert cli.main(["predict", str(trained / "model.keras"), str(images), "--out", str(out), "--skip-errors"]) == 0
    err = capsys.readouterr().err
    assert "warning: skipped" in err and "c.jpg" in err and "skipped 1 of 3 images" in err


def test_visualize_targets(tmp_path, capsys):
    output = tmp_path / "targets.png"
    assert cli.main(["visualize-targets", "--format", "deepforest", "--data", "OSBS_029",
                     "--output", str(output)]) == 0
    assert output.read_bytes()[:4] == b"\x89PNG"
    assert "positive (red)" in capsys.readouterr().out


def test_data_argument_errors():
    with pytest.raises(SystemExit, match="--data is required"):
        cli.main(["visualize-targets", "--format", "voc"])
    with pytest.raises(SystemExit, match="--images is required"):
        cli.main(["visualize-targets", "--format", "coco", "--data", "x.json"])


def test_model_arguments_build_fpn_and_resize_policy():
    args = cli.build_parser().parse_args(["train", "--backbone", "simple_fpn", "--image-size", "64", "96",
                                          "--resize", "shorter_side", "--head-channels", "8"])
    model = cli._build_model(args)
    assert model.backbone_strides == (4, 8, 16, 32, 64) and model.resize.policy == "shorter_side"
    assert model.target_encoder.resize == model.resize
