"""The detector end to end on a VOC folder laid out and written as PASCAL VOC's own files are (JPEG photos of
different, non-square sizes; XML with folder / source / owner / segmented, objects with pose, truncated, occluded,
difficult and nested person parts that carry their own bndbox): from_voc → ds.map(model.target_encoder) →
model.fit → predictions in each photo's own pixels → export → the TF1 session loader (as TF Serving loads a
SavedModel) serves the same detections."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
from rpn_tf.data import adapters
from rpn_tf.modeling.fitting import train_model
from rpn_tf.ops.box_ops import iou_matrix
from rpn_tf.serving import export_saved_model

VOC_XML = """<annotation>
\t<folder>VOC2007</folder>
\t<filename>{filename}</filename>
\t<source><database>The VOC2007 Database</database><annotation>PASCAL VOC2007</annotation><image>flickr</image>
\t\t<flickrid>{index}</flickrid></source>
\t<owner><flickrid>someone</flickrid><name>?</name></owner>
\t<size><width>{width}</width><height>{height}</height><depth>3</depth></size>
\t<segmented>0</segmented>
{objects}
</annotation>
"""
VOC_OBJECT = """\t<object>
\t\t<name>{name}</name><pose>{pose}</pose><truncated>{truncated}</truncated><occluded>0</occluded>
\t\t<difficult>{difficult}</difficult>
\t\t<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>
{parts}\t</object>"""
PART = ("\t\t<part><name>head</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
        "</bndbox></part>\n")
COLORS = {"bird": (230, 40, 40), "person": (40, 40, 230)}
SIZES = [(150, 200), (200, 150), (120, 260), (180, 180)]  # (height, width), as VOC's portrait and landscape photos
OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def write_voc_folder(root, rng):
    os.makedirs(os.path.join(root, "Annotations"))
    os.makedirs(os.path.join(root, "JPEGImages"))
    photos = []
    for index, (height, width) in enumerate(SIZES * 2):
        image = rng.normal(110, 25, (height, width, 3)).clip(0, 255).astype(np.uint8)
        objects = []
        for number in range(2):
            name = ("bird", "person")[(index + number) % 2]
            side_y, side_x = int(rng.integers(30, height // 2)), int(rng.integers(30, width // 2))
            y1, x1 = int(rng.integers(1, height - side_y)), int(rng.integers(1, width - side_x))
            y2, x2 = y1 + side_y, x1 + side_x
            image[y1:y2, x1:x2] = COLORS[name]
            parts = PART.format(x1=x1 + 2, y1=y1 + 2, x2=x1 + side_x // 2, y2=y1 + side_y // 3) \
                if name == "person" else ""
            objects.append(VOC_OBJECT.format(name=name, pose="Frontal", truncated=int(x1 == 1), difficult=0,
                                             x1=x1 + 1, y1=y1 + 1, x2=x2, y2=y2, parts=parts))  # VOC is 1-based
        filename = f"{index:06d}.jpg"
        tf.io.write_file(os.path.join(root, "JPEGImages", filename), tf.io.encode_jpeg(image, quality=95))
        with open(os.path.join(root, "Annotations", f"{index:06d}.xml"), "w") as file:
            file.write(VOC_XML.format(filename=filename, index=index, width=width, height=height,
                                      objects="\n".join(objects)))
        photos.append(image)
    return photos


def train(root, out_dir):
    """The fixture's training, run in its own process (``python this_file.py ROOT OUT``): seeded, with op
    determinism, so the run is the same every time whatever else the machine does."""
    dataset, report, class_names = adapters.from_voc(root)
    assert class_names == ["bird", "person"] and not report.skipped
    keras.utils.set_random_seed(0)
    rpn = rpn_tf.RPNModel((128, 128), backbone="simple_fpn",
                          anchor_config=rpn_tf.MultiLevelAnchorConfig.fpn(smallest_size=16.0),
                          target_encoder_config={"max_boxes": 4})
    model = rpn_tf.FasterRCNN(len(class_names), rpn=rpn, representation_size=32, seed=0)  # default detection
    data = dataset.map(model.target_encoder).batch(4)
    history = train_model(model, data, 25, learning_rate=2e-3, verbose=0)
    model.save(os.path.join(out_dir, "model.keras"))
    with open(os.path.join(out_dir, "history.json"), "w") as file:
        json.dump(history, file)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("VOCdevkit") / "VOC2007")
    photos = write_voc_folder(root, np.random.default_rng(0))
    out_dir = str(tmp_path_factory.mktemp("run"))
    result = subprocess.run([sys.executable, __file__, root, out_dir], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(out_dir, "history.json")) as file:
        history = json.load(file)
    model = keras.models.load_model(os.path.join(out_dir, "model.keras"))
    dataset, _, _ = adapters.from_voc(root)
    return model, history, photos, list(dataset.as_numpy_iterator()), tmp_path_factory


def test_voc_photos_fit_and_every_object_is_detected_in_its_photos_own_pixels(trained):
    model, history, photos, elements, _ = trained
    assert all(np.isfinite(values).all() for values in history.values())
    assert history["loss"][-1] < history["loss"][0]
    for photo, element in zip(photos, elements):
        out = model.predict(photo[None], verbose=0)
        count = int(out["num_detections"][0])
        boxes, classes = out["detection_boxes"][0, :count], out["detection_classes"][0, :count]
        height, width = photo.shape[:2]
        assert count > 0 and boxes.min() >= 0 and boxes[:, 2].max() <= height and boxes[:, 3].max() <= width
        # each object found by a detection of its class (score > 0.05) in the photo's own pixels (from_voc reads
        # VOC's numbers as they are, docs/conventions.md)
        iou = iou_matrix(tf.constant(boxes, tf.float32), tf.constant(element["boxes"], tf.float32)).numpy()
        same_class = classes[:, None] == element["classes"][None, :]
        assert (np.where(same_class, iou, 0.0).max(axis=0) >= 0.5).all(), (iou, classes, element["classes"])


def test_exported_voc_detector_serves_predict_through_the_tf1_session_loader(trained):
    model, _, photos, _, tmp_path_factory = trained
    path = str(tmp_path_factory.mktemp("model") / "voc_detector.keras")
    model.save(path)
    export_dir = export_saved_model(path, str(tmp_path_factory.mktemp("serving")), "voc")
    requests = []
    for photo in photos[:4]:
        jpeg = tf.io.encode_jpeg(photo, quality=95).numpy()
        decoded = tf.io.decode_jpeg(jpeg).numpy()  # what the served graph decodes
        requests.append((jpeg, model.predict(decoded[None], verbose=0)))
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        signature = meta_graph.signature_def["serving_default"]
        fetches = {key: signature.outputs[key].name for key in OUTPUTS}
        served = [session.run(fetches, {signature.inputs["encoded_images"].name: [jpeg]}) for jpeg, _ in requests]
    for (_, expected), outputs in zip(requests, served):
        assert int(expected["num_detections"][0]) > 0
        for key in OUTPUTS:
            np.testing.assert_allclose(outputs[key], expected[key], atol=1e-3, err_msg=key)


if __name__ == "__main__":
    tf.config.experimental.enable_op_determinism()
    train(sys.argv[1], sys.argv[2])
