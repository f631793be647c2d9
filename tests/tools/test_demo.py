import os

from rpn_tf.tools import demo


def test_demo_runs_with_one_epoch(tmp_path, capsys):
    demo.main(["--out", str(tmp_path), "--epochs", "1", "--detector-epochs", "1"])
    output = capsys.readouterr().out
    assert "OSBS_029 recall before training" in output and "after training" in output
    assert "served model on OSBS_029" in output
    assert "recall waterfall on OSBS_029 before training" in output and "top 300 after NMS" in output
    for name in ("rpn_targets.png", "proposals.png", "rpn_deepforest.keras", "waterfall.png"):
        path = tmp_path / name
        assert path.exists() and os.path.getsize(path) > 1000
    assert (tmp_path / "proposals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "serving" / "rpn" / "1" / "saved_model.pb").exists()
    # step 4: the detector
    assert "FasterRCNN: 1 epochs" in output and "AP50" in output and "AR@300" in output
    assert (tmp_path / "serving" / "faster_rcnn" / "1" / "saved_model.pb").exists()
    assert (tmp_path / "detections.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "faster_rcnn_deepforest.keras").exists()
