"""A FasterRCNN exported for TF Serving: the TF Object Detection API's output names, the three image signatures,
warmup records, and the TF1 session loader (TF Serving's) serving what model.predict gives."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

import rpn_tf
from rpn_tf.serving import WARMUP_FILE, export_saved_model, load_model

OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections", "image_scale")


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    keras.utils.set_random_seed(0)
    rpn = rpn_tf.RPNModel((128, 128), backbone="simple_fpn",
                          anchor_config=rpn_tf.MultiLevelAnchorConfig.fpn(smallest_size=16.0))
    model = rpn_tf.FasterRCNN(3, rpn=rpn, representation_size=32, detection_config={"score_threshold": 0.0})
    path = str(tmp_path_factory.mktemp("model") / "detector.keras")
    model.save(path)
    base = str(tmp_path_factory.mktemp("serving"))
    return model, path, export_saved_model(path, base, "detector")


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    image = (rng.uniform(0, 255, (150, 210, 3))).astype(np.uint8)
    image[40:90, 60:140] = (250, 30, 30)
    return image


def test_signatures_and_output_names(detector):
    _, _, export_dir = detector
    loaded = tf.saved_model.load(export_dir)
    assert sorted(loaded.signatures) == ["image_tensor", "serving_default", "tf_example"]
    for name in loaded.signatures:
        assert sorted(loaded.signatures[name].structured_outputs) == sorted(OUTPUTS)
    assert isinstance(load_model(detector[1]), rpn_tf.FasterRCNN)


def test_served_detections_equal_predict(detector, photo):
    model, _, export_dir = detector
    expected = model.predict(photo[None], verbose=0)
    assert int(expected["num_detections"][0]) > 0
    loaded = tf.saved_model.load(export_dir)
    by_tensor = loaded.signatures["image_tensor"](images=tf.constant(photo[None]))
    by_bytes = loaded.signatures["serving_default"](encoded_images=tf.constant([tf.io.encode_png(photo).numpy()]))
    for served in (by_tensor, by_bytes):
        for key in OUTPUTS:
            np.testing.assert_allclose(served[key].numpy(), expected[key], atol=1e-4, err_msg=key)
    boxes = expected["detection_boxes"][0, :int(expected["num_detections"][0])]
    assert boxes[:, 2].max() <= 150 and boxes[:, 3].max() <= 210  # the photo's own pixels


def test_tf1_session_loader_serves_the_same_detections(detector, photo):
    model, _, export_dir = detector
    expected = model.predict(photo[None], verbose=0)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        signature = meta_graph.signature_def["image_tensor"]
        fetches = {key: signature.outputs[key].name for key in OUTPUTS}
        served = session.run(fetches, {signature.inputs["images"].name: photo[None]})
    for key in OUTPUTS:
        np.testing.assert_allclose(served[key], expected[key], atol=1e-4, err_msg=key)


def test_warmup_records_run(detector):
    _, _, export_dir = detector
    loaded = tf.saved_model.load(export_dir)
    records = list(tf.data.TFRecordDataset(os.path.join(export_dir, WARMUP_FILE)))
    assert len(records) == 3
    for record in records:
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert outputs["detection_boxes"].shape[1:] == (100, 4)
