import json
import os

import numpy as np
import pytest
import tensorflow as tf

import keras
import rpn_tf
from rpn_tf.data import adapters
from rpn_tf.data.records import named_data_errors

RNG = np.random.default_rng(0)


def make_images(count=3, size=(48, 64)):
    return [RNG.integers(0, 255, size=(*size, 3), dtype=np.uint8) for _ in range(count)]


def write_png(path, image):
    tf.io.write_file(str(path), tf.io.encode_png(image))


def elements(dataset):
    return list(dataset.as_numpy_iterator())


def assert_round_trip(dataset, tmp_path):
    original = elements(dataset)
    path = str(tmp_path / "round_trip.tfrecord")
    assert adapters.write_od_tfrecords(dataset, path) == len(original)
    reread = elements(adapters.read_od_tfrecords(path))
    assert len(reread) == len(original)
    for want, got in zip(original, reread):
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-3)  # via normalized float32
        np.testing.assert_array_equal(got["classes"], want["classes"])


def test_tfds_dicts(tmp_path):
    image = make_images(1)[0]
    tfds_like = tf.data.Dataset.from_tensors({"image": image, "objects": {
        "bbox": np.array([[0.25, 0.5, 0.5, 0.75]], np.float32), "label": np.array([2], np.int64)}})
    element = elements(adapters.from_tfds(tfds_like))[0]
    np.testing.assert_allclose(element["boxes"], [[12, 32, 24, 48]])
    np.testing.assert_array_equal(element["classes"], [3])  # label + 1: 0 is background
    assert_round_trip(adapters.from_tfds(tfds_like), tmp_path)
    bad = tf.data.Dataset.from_tensors({"image": image, "objects": {
        "bbox": np.array([[0.25, 0.5, 1.5, 0.75]], np.float32), "label": np.array([2], np.int64)}})
    with pytest.raises(tf.errors.InvalidArgumentError, match="normalized"):
        elements(adapters.from_tfds(bad))


def make_coco(tmp_path, extra_annotations=()):
    images = make_images(3)
    for index, image in enumerate(images):
        write_png(tmp_path / f"img{index}.png", image)
    coco = {
        "images": [{"id": i + 1, "file_name": f"img{i}.png", "height": 48, "width": 64} for i in range(3)],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [10, 5, 20, 30], "category_id": 3, "iscrowd": 0},
            {"id": 2, "image_id": 1, "bbox": [0, 0, 64, 48], "category_id": 1, "iscrowd": 1},
            {"id": 3, "image_id": 2, "bbox": [30, 10, 10, 10], "category_id": 7},
            *extra_annotations,
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}, {"id": 7, "name": "c"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return str(path), images


def test_coco(tmp_path):
    path, images = make_coco(tmp_path)
    dataset, report = adapters.from_coco(path, str(tmp_path))
    items = elements(dataset)
    assert len(items) == 3
    np.testing.assert_array_equal(items[0]["image"], images[0])
    np.testing.assert_allclose(items[0]["boxes"], [[5, 10, 35, 30]])  # [x, y, w, h] -> yxyx
    np.testing.assert_array_equal(items[0]["classes"], [3])
    assert items[2]["boxes"].shape == (0, 4)  # no annotations: kept, all background
    assert report.excluded_boxes["iscrowd"] == 1 and not report.skipped
    assert_round_trip(dataset, tmp_path)


def test_coco_contiguous_category_ids(tmp_path):
    path, _ = make_coco(tmp_path)
    dataset, report = adapters.from_coco(path, str(tmp_path), category_ids="contiguous")
    items = elements(dataset)
    np.testing.assert_array_equal(items[0]["classes"], [2])  # category 3 is the second listed id
    np.testing.assert_array_equal(items[1]["classes"], [3])  # category 7 the third
    assert report.categories == {1: {"id": 1, "name": "a"}, 2: {"id": 3, "name": "b"}, 3: {"id": 7, "name": "c"}}
    unlisted = {"id": 8, "image_id": 3, "bbox": [1, 1, 5, 5], "category_id": 5}
    path, _ = make_coco(tmp_path, [unlisted])
    with pytest.raises(ValueError, match="category_id 5, which 'categories' does not list"):
        adapters.from_coco(path, str(tmp_path), category_ids="contiguous")
    assert len(elements(adapters.from_coco(path, str(tmp_path))[0])) == 3  # raw ids: any id is kept
    with pytest.raises(ValueError, match="category_ids must be one of"):
        adapters.from_coco(path, str(tmp_path), category_ids="dense")


def test_coco_malformed_raise_or_skip(tmp_path):
    outside = {"id": 9, "image_id": 3, "bbox": [60, 40, 30, 30], "category_id": 1}
    path, _ = make_coco(tmp_path, [outside])
    with pytest.raises(ValueError, match=r"image 3 \(img2.png\).*outside"):
        adapters.from_coco(path, str(tmp_path))
    dataset, report = adapters.from_coco(path, str(tmp_path), on_error="skip")
    assert len(elements(dataset)) == 2 and len(report.skipped) == 1
    os.remove(tmp_path / "img1.png")
    with pytest.raises(ValueError, match="img1.png not found"):
        adapters.from_coco(path, str(tmp_path), on_error="raise")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        adapters.from_coco(str(tmp_path / "broken.json"), str(tmp_path))


VOC_OBJECT = ("<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
              "<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def make_voc(tmp_path, objects_per_image):
    os.makedirs(tmp_path / "Annotations")
    os.makedirs(tmp_path / "JPEGImages")
    images = make_images(len(objects_per_image))
    for index, (image, objects) in enumerate(zip(images, objects_per_image)):
        write_png(tmp_path / "JPEGImages" / f"{index}.png", image)
        body = "".join(VOC_OBJECT.format(**obj) for obj in objects)
        (tmp_path / "Annotations" / f"{index}.xml").write_text(
            f"<annotation><filename>{index}.png</filename><size><width>64</width><height>48</height></size>"
            f"{body}</annotation>")
    return images


def test_voc_folder_and_difficult(tmp_path):
    make_voc(tmp_path, [
        [{"name": "dog", "difficult": 0, "x1": 1, "y1": 2, "x2": 11, "y2": 22},
         {"name": "cat", "difficult": 1, "x1": 5, "y1": 5, "x2": 9, "y2": 9}],
        [{"name": "cat", "difficult": 0, "x1": 0, "y1": 0, "x2": 64, "y2": 48}],
    ])
    dataset, report, names = adapters.from_voc(str(tmp_path))
    assert names == ["cat", "dog"]
    items = elements(dataset)
    np.testing.assert_allclose(items[0]["boxes"], [[2, 1, 22, 11]])
    np.testing.assert_array_equal(items[0]["classes"], [2])
    np.testing.assert_array_equal(items[1]["classes"], [1])
    assert report.excluded_boxes["difficult"] == 1
    with_difficult, _, _ = adapters.from_voc(str(tmp_path), include_difficult=True)
    assert len(elements(with_difficult)[0]["boxes"]) == 2
    assert_round_trip(dataset, tmp_path)
    with pytest.raises(ValueError, match="unknown class names"):
        adapters.from_voc(str(tmp_path), class_names=["dog"])
    skipped, report, _ = adapters.from_voc(str(tmp_path), class_names=["dog"], on_error="skip")
    assert len(elements(skipped)) == 1 and len(report.skipped) == 1


def test_real_deepforest_file_and_round_trip(tmp_path):
    dataset = adapters.from_deepforest(["OSBS_029"])
    element = elements(dataset)[0]
    assert element["image"].shape == (400, 400, 3) and len(element["boxes"]) == 61
    np.testing.assert_array_equal(element["classes"], 1)
    assert_round_trip(dataset, tmp_path)


def test_od_tfrecord_malformed_names_record(tmp_path):
    example = adapters.od_example(make_images(1)[0], [[0, 0, 10, 10]], [1, 2], filename="bad.png")
    path = str(tmp_path / "bad.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(example.SerializeToString())
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad.png"):
        elements(adapters.read_od_tfrecords(path))
    with pytest.raises(FileNotFoundError, match="no TFRecord"):
        adapters.read_od_tfrecords(str(tmp_path / "none-*.tfrecord"))


@pytest.mark.parametrize("cut", [5, 14, -3])
def test_truncated_tfrecord_is_named(tmp_path, cut):
    examples = [adapters.od_example(image, [[0, 0, 10, 10]], [1], filename=f"{i}.png")
                for i, image in enumerate(make_images(3))]
    good, bad = str(tmp_path / "good.tfrecord"), str(tmp_path / "bad.tfrecord")
    for path in (good, bad):
        with tf.io.TFRecordWriter(path) as writer:
            for example in examples:
                writer.write(example.SerializeToString())
    data = open(bad, "rb").read()
    third = sum(16 + len(example.SerializeToString()) for example in examples[:2])  # where record 2 starts
    open(bad, "wb").write(data[:third + cut] if cut > 0 else data[:cut])
    assert len(elements(adapters.read_od_tfrecords(good))) == 3
    # Default: checked as the records stream (no extra read), named where the readable records end.
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"bad.tfrecord.*is truncated or corrupt: record\] \[2\] \[at byte\] \[{third}\]"):
        elements(adapters.read_od_tfrecords([good, bad]))
    # Where the data are consumed (fit, evaluate, the CLI): TensorFlow's type for it, a message without internals
    with pytest.raises(tf.errors.DataLossError) as raised, named_data_errors():
        elements(adapters.read_od_tfrecords([good, bad]))
    assert raised.value.message == (f"TFRecord file {bad} is truncated or corrupt: record 2 at byte {third} (of "
                                    f"{len(data[:third + cut] if cut > 0 else data[:cut])}) cannot be read; the 2 "
                                    "records before it were read")
    # Skipped with a warning: the 5 whole records, nothing silently.
    assert len(elements(adapters.read_od_tfrecords([good, bad], on_error="skip"))) == 5
    # Up front: a seek per record before training.
    with pytest.raises(ValueError, match=r"bad.tfrecord is truncated: record 2 at byte \d+"):
        adapters.read_od_tfrecords([good, bad], verify="upfront")
    # TensorFlow alone: DataLossError naming no file or, for a cut inside a record's 12-byte header, silently
    # one record fewer.
    if 0 < cut < 12:
        assert len(elements(adapters.read_od_tfrecords([good, bad], verify="none"))) == 5
    else:
        with pytest.raises(tf.errors.DataLossError):
            elements(adapters.read_od_tfrecords([good, bad], verify="none"))


def test_skip_errors_for_tfrecords_skips_malformed_records_and_keeps_the_rest(tmp_path):
    images = make_images(3)
    path = str(tmp_path / "mixed.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(adapters.od_example(images[0], [[0, 0, 10, 10]], [1], filename="a.png").SerializeToString())
        writer.write(adapters.od_example(images[1], [[0, 0, 10, 10]], [1, 2], filename="bad.png").SerializeToString())
        writer.write(adapters.od_example(images[2], [[0, 0, 10, 10]], [1], filename="c.png").SerializeToString())
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad.png"):
        elements(adapters.read_od_tfrecords(path))
    assert len(elements(adapters.read_od_tfrecords(path, on_error="skip"))) == 2


@pytest.mark.parametrize("annotation,message", [
    ({"id": 9, "image_id": 42, "bbox": [1, 1, 5, 5], "category_id": 1}, "image_id 42 matches no entry"),
    ({"id": 9, "image_id": 3, "bbox": None, "category_id": 1}, "has bbox None"),
    ({"id": 9, "image_id": 3, "bbox": [1, 2, 3], "category_id": 1}, "4 numbers"),
])
def test_coco_records_never_dropped_silently(tmp_path, annotation, message):
    path, _ = make_coco(tmp_path, [annotation])
    with pytest.raises(ValueError, match=message):
        adapters.from_coco(path, str(tmp_path))
    dataset, report = adapters.from_coco(path, str(tmp_path), on_error="skip")
    assert len(report.skipped) == 1 and message.split()[-1] in next(iter(report.skipped.values()))
    assert len(elements(dataset)) == (3 if "image_id 42" in message else 2)


def test_declared_size_and_unreadable_images_are_named(tmp_path):
    path, _ = make_coco(tmp_path)
    write_png(tmp_path / "img1.png", make_images(1, size=(40, 64))[0])  # declared 48x64
    (tmp_path / "img2.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"declares a 48x64 image but .*img1.png is 40x64"):
        adapters.from_coco(path, str(tmp_path))
    dataset, report = adapters.from_coco(path, str(tmp_path), on_error="skip")
    assert len(elements(dataset)) == 1
    reasons = " ".join(report.skipped.values())
    assert "is 40x64" in reasons and "img2.png is not a readable image" in reasons
    # VOC: <size> against the image file, and objects without a class name
    voc = tmp_path / "voc"
    make_voc(voc, [[{"name": "dog", "difficult": 0, "x1": 1, "y1": 2, "x2": 10, "y2": 20}], []])
    write_png(voc / "JPEGImages" / "1.png", make_images(1, size=(30, 30))[0])
    with pytest.raises(ValueError, match="declares a 48x64 image"):
        adapters.from_voc(str(voc))
    assert len(adapters.from_voc(str(voc), on_error="skip")[1].skipped) == 1
    (voc / "Annotations" / "1.xml").write_text(
        "<annotation><size><width>64</width><height>48</height></size><object><name> </name><bndbox><xmin>1</xmin>"
        "<ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    with pytest.raises(ValueError, match="no <name>"):
        adapters.from_voc(str(voc))


def test_corrupt_image_data_is_named_and_skippable(tmp_path):
    path, _ = make_coco(tmp_path)
    data = (tmp_path / "img1.png").read_bytes()
    (tmp_path / "img1.png").write_bytes(data[:len(data) // 2])  # valid header, truncated pixels
    with pytest.raises(ValueError, match=r"img1.png is corrupt or truncated"):
        adapters.from_coco(path, str(tmp_path), verify_images=True)
    dataset, report = adapters.from_coco(path, str(tmp_path), on_error="skip")  # verifies by default when skipping
    assert len(elements(dataset)) == 2 and "corrupt or truncated" in " ".join(report.skipped.values())


def test_a_corrupt_record_inside_a_tfrecord_is_named_too(tmp_path):
    examples = [adapters.od_example(image, [[0, 0, 10, 10]], [1], filename=f"{i}.png").SerializeToString()
                for i, image in enumerate(make_images(3))]
    path = str(tmp_path / "rot.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for example in examples:
            writer.write(example)
    data = bytearray(open(path, "rb").read())
    data[16 + len(examples[0]) + 12 + 30] ^= 0xFF  # a flipped bit in record 1's payload: its CRC fails
    open(path, "wb").write(bytes(data))
    first_end = 16 + len(examples[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"rot.tfrecord.*record\] \[1\] \[at byte\] \[{first_end}\]"):
        elements(adapters.read_od_tfrecords(path))
    assert len(elements(adapters.read_od_tfrecords(path, on_error="skip"))) == 1
    # through a model's fit: a DataLossError naming the file, the record and the byte, no TensorFlow internals
    keras.utils.set_random_seed(0)
    model = rpn_tf.RPNModel((32, 32), rpn_tf.AnchorConfig(stride=16, scales=(1.0,)), backbone="simple",
                            target_encoder_config={"max_boxes": 2})
    model.compile(optimizer="adam")
    data = adapters.read_od_tfrecords(path).map(model.target_encoder).batch(1)
    with pytest.raises(tf.errors.DataLossError) as raised:
        model.fit(data, epochs=1, verbose=0)
    message = raised.value.message
    assert message.startswith(f"TFRecord file {path} is truncated or corrupt: record 1 at byte {first_end}")
    assert "function_node" not in message and "Graph execution" not in message
