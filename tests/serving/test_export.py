import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

import rpn_tf
from rpn_tf.serving import WARMUP_FILE, client, export_saved_model, load_model
from rpn_tf.data import deepforest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = (64, 64)

EXPORT_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "export", "export_saved_model.py")


def saved_model_cli():
    """The ``saved_model_cli`` installed with this interpreter's TensorFlow (its module if no script)."""
    script = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def run(args, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    model = rpn_tf.RPNModel(IMAGE_SIZE, rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)), backbone="simple",
                            head_channels=16)
    path = str(tmp_path_factory.mktemp("model") / "rpn.keras")
    model.save(path)
    return path


@pytest.fixture(scope="module")
def export_dir(keras_file, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("serving"))
    result = run([sys.executable, EXPORT_SCRIPT, keras_file, "--base-dir", base, "--name", "rpn"])
    assert result.returncode == 0, result.stderr
    path = result.stdout.strip().splitlines()[-1]
    assert path == os.path.join(base, "rpn", "1")
    return path


@pytest.fixture(scope="module")
def real_jpeg():
    image, _ = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    return tf.io.encode_jpeg(image).numpy(), image


def test_saved_model_cli_show_lists_signatures(export_dir):
    result = run([*saved_model_cli(), "show", "--dir", export_dir, "--all"])
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for signature in ("serving_default", "image_tensor", "tf_example", "sample_rois"):
        assert f"signature_def['{signature}']" in text
    assert "dtype: DT_STRING\n        shape: (-1)\n        name: serving_default_encoded_images" in text
    assert "dtype: DT_UINT8\n        shape: (-1, -1, -1, 3)" in text
    assert "outputs['proposal_boxes'] tensor_info:\n        dtype: DT_FLOAT\n        shape: (-1, 300, 4)" in text
    assert "outputs['num_proposals'] tensor_info:\n        dtype: DT_INT32\n        shape: (-1)" in text


def test_saved_model_cli_run_on_real_jpeg(export_dir, real_jpeg, tmp_path):
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.array([real_jpeg[0]], dtype=object), allow_pickle=True)
    out_dir = tmp_path / "out"
    result = run([*saved_model_cli(), "run", "--dir", export_dir, "--tag_set", "serve", "--signature_def",
                  "serving_default", "--inputs", f"encoded_images={inputs}", "--outdir", str(out_dir)])
    assert result.returncode == 0, result.stderr
    boxes = np.load(out_dir / "proposal_boxes.npy")
    count = int(np.load(out_dir / "num_proposals.npy")[0])
    assert boxes.shape == (1, 300, 4) and count > 0
    assert np.all(boxes[0, :count] >= 0) and np.all(boxes[0, :count] <= 400)  # original image pixels


def test_reloaded_outputs_equal_in_process_model(keras_file, export_dir, real_jpeg):
    model = load_model(keras_file)
    loaded = tf.saved_model.load(export_dir)
    image = real_jpeg[1]
    served = loaded.signatures["image_tensor"](images=tf.constant(image[None]))
    # model.predict takes the raw photo too and returns boxes in its pixels: the two agree.
    expected = model.predict(image[None], verbose=0)
    np.testing.assert_allclose(served["image_scale"].numpy(), [np.array(IMAGE_SIZE) / 400.0])
    np.testing.assert_allclose(expected["image_scale"], served["image_scale"].numpy())
    count = int(expected["num_proposals"][0])
    assert int(served["num_proposals"][0]) == count
    np.testing.assert_allclose(served["proposal_boxes"].numpy()[0, :count], expected["proposal_boxes"][0, :count],
                               atol=1e-3)
    np.testing.assert_allclose(served["proposal_scores"].numpy(), expected["proposal_scores"], atol=1e-5)
    # the encoded-bytes signature decodes the same pixels for a PNG
    png = tf.io.encode_png(image).numpy()
    from_png = loaded.signatures["serving_default"](encoded_images=tf.constant([png, png]))
    np.testing.assert_allclose(from_png["proposal_boxes"].numpy()[0], served["proposal_boxes"].numpy()[0], atol=1e-3)


def test_mixed_sizes_and_tf_example(export_dir, real_jpeg):
    loaded = tf.saved_model.load(export_dir)
    small = tf.io.encode_png(real_jpeg[1][:100, :250]).numpy()
    out = loaded.signatures["serving_default"](encoded_images=tf.constant([real_jpeg[0], small]))
    # letterbox: 100×250 → 26×64 on the 64×64 canvas
    np.testing.assert_allclose(out["image_scale"].numpy(), [[64 / 400, 64 / 400], [26 / 100, 64 / 250]], rtol=1e-6)
    second = out["proposal_boxes"].numpy()[1]
    assert np.all(second[:, 2] <= 100) and np.all(second[:, 3] <= 250)
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[real_jpeg[0]]))}))
    from_example = loaded.signatures["tf_example"](serialized_examples=tf.constant([example.SerializeToString()]))
    np.testing.assert_allclose(from_example["proposal_boxes"].numpy()[0], out["proposal_boxes"].numpy()[0], atol=1e-4)


@pytest.mark.parametrize("data, message", [
    (b"", "encoded_images: an element is empty"),
    (b"not an image at all", "encoded_images: an element is not a JPEG, PNG, GIF or BMP image"),
])
def test_bad_image_bytes_raise_invalid_argument_naming_input(export_dir, data, message):
    loaded = tf.saved_model.load(export_dir)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures["serving_default"](encoded_images=tf.constant([data]))


def test_truncated_jpeg_is_an_invalid_argument(export_dir, real_jpeg):
    loaded = tf.saved_model.load(export_dir)
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["serving_default"](encoded_images=tf.constant([real_jpeg[0][:200]]))
    missing_key = tf.train.Example().SerializeToString()
    with pytest.raises(tf.errors.InvalidArgumentError, match="image/encoded"):
        loaded.signatures["tf_example"](serialized_examples=tf.constant([missing_key]))


def test_warmup_records_parse_and_run(export_dir):
    loaded = tf.saved_model.load(export_dir)
    records = list(tf.data.TFRecordDataset(os.path.join(export_dir, WARMUP_FILE)))
    assert len(records) == 3
    signatures = []
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert request.model_spec.name == "rpn"
        signatures.append(request.model_spec.signature_name)
        inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert outputs["proposal_boxes"].shape[1:] == (300, 4)
    assert sorted(signatures) == ["image_tensor", "serving_default", "tf_example"]


def test_sample_rois_signature(export_dir):
    loaded = tf.saved_model.load(export_dir)
    out = loaded.signatures["sample_rois"](
        proposals=tf.constant([[[0, 0, 20, 20], [30, 30, 60, 60], [0, 0, 5, 5]]], tf.float32),
        num_proposals=tf.constant([3]), gt_boxes=tf.constant([[[0, 0, 20, 22], [-1, -1, -1, -1]]], tf.float32),
        gt_classes=tf.constant([[4, -1]]))
    classes = out["roi_classes"].numpy()[0]
    assert out["rois"].shape == (1, 128, 4)
    assert sorted(classes[classes > 0].tolist()) == [4, 4]  # the proposal at IoU 0.91 and the appended GT box
    assert (classes == 0).sum() == 2 and (classes == -1).sum() == 124


def test_export_errors(keras_file, export_dir, tmp_path):
    base = os.path.dirname(os.path.dirname(export_dir))
    with pytest.raises(FileExistsError, match="immutable"):
        export_saved_model(load_model(keras_file), base, "rpn", version=1)
    result = run([sys.executable, EXPORT_SCRIPT, str(tmp_path / "missing.keras"), "--base-dir", str(tmp_path)])
    assert result.returncode == 2 and "no such model file" in result.stderr
    weights = tmp_path / "rpn.weights.h5"
    load_model(keras_file).save_weights(str(weights))
    with pytest.raises(ValueError, match="config"):
        load_model(str(weights))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(load_model(keras_file).get_config()))
    assert isinstance(load_model(str(weights), str(config)), rpn_tf.RPNModel)


def test_client_request_bodies(real_jpeg):
    request = client.predict_request("rpn", "serving_default", encoded_images=[real_jpeg[0]])
    assert request.model_spec.signature_name == "serving_default"
    assert tf.make_ndarray(request.inputs["encoded_images"])[0] == real_jpeg[0]
    body = client.rest_body("serving_default", encoded_images=[real_jpeg[0]])
    assert base64.b64decode(body["inputs"]["encoded_images"][0]["b64"]) == real_jpeg[0]
    json.dumps(body)
    parsed = client.parse_rest_response(json.dumps({"outputs": {"num_proposals": [3], "proposal_scores": [[0.5]]}}))
    assert parsed["num_proposals"].tolist() == [3]
    with pytest.raises(ValueError, match="takes inputs"):
        client.rest_body("image_tensor", encoded_images=[b"x"])
    with pytest.raises(RuntimeError, match="error"):
        client.parse_rest_response({"error": "bad"})


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None,
                    reason="tensorflow_model_server is not on PATH (install TF Serving to run this test)")
def test_served_over_grpc_and_rest(export_dir, real_jpeg):
    grpc_port, rest_port = _free_port(), _free_port()
    base = os.path.dirname(os.path.dirname(export_dir))
    server = subprocess.Popen(["tensorflow_model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                               "--model_name=rpn", f"--model_base_path={os.path.join(base, 'rpn')}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                rest = client.rest_predict(f"http://127.0.0.1:{rest_port}", "rpn",
                                           client.rest_body("serving_default", encoded_images=[real_jpeg[0]]))
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        grpc = client.grpc_predict(f"127.0.0.1:{grpc_port}",
                                   client.predict_request("rpn", "serving_default", encoded_images=[real_jpeg[0]]))
        np.testing.assert_allclose(rest["proposal_boxes"], grpc["proposal_boxes"], atol=1e-3)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_version_must_be_positive_and_failed_exports_leave_no_version(keras_file, tmp_path):
    model = load_model(keras_file)
    for version in (0, -3, 1.5):
        with pytest.raises(ValueError, match="version must be an integer >= 1"):
            export_saved_model(model, str(tmp_path), "rpn", version=version)
    # A temporary folder left by a killed export (its process is gone) is removed; a failing export leaves
    # neither a numeric folder nor a temporary one.
    stale = tmp_path / "rpn" / ".7.tmp-999999999"
    (stale / "variables").mkdir(parents=True)
    # Another host's export (its process cannot be checked from here): kept while recent, removed when old.
    running, abandoned = tmp_path / "rpn" / ".8.tmp-otherhost-12", tmp_path / "rpn" / ".9.tmp-otherhost-13"
    running.mkdir()
    abandoned.mkdir()
    os.utime(abandoned, (0, 0))
    with pytest.raises(tf.errors.InvalidArgumentError):  # the warmup image fails after the SavedModel is written
        export_saved_model(model, str(tmp_path), "rpn", warmup_jpeg=b"not a jpeg")
    assert sorted(os.listdir(tmp_path / "rpn")) == [running.name]
