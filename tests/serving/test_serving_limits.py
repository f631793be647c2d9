"""Serving limits and bad requests: bounded decoding, named elements, validated GT, and a seeded fuzz."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import rpn_tf
from rpn_tf.data import deepforest
from rpn_tf.serving import export_saved_model
from rpn_tf.serving.module import header_size


def encoded(image, image_format):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "GIF", "BMP"])
def test_header_size_equals_decoded_size(image_format):
    image = np.random.default_rng(0).integers(0, 255, (37, 61, 3), dtype=np.uint8)
    data = encoded(image, image_format)
    np.testing.assert_array_equal(header_size(tf.constant(data)), [37, 61])
    assert tf.io.decode_image(data, channels=3, expand_animations=False).shape[:2] == (37, 61)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = rpn_tf.RPNModel((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)), backbone="simple",
                            head_channels=8)
    path = export_saved_model(model, str(tmp_path_factory.mktemp("serving")), "rpn", max_pixels=100 * 100)
    return tf.saved_model.load(path).signatures


def test_images_above_the_pixel_limit_are_refused_before_decoding_naming_the_element(served):
    small = encoded(np.zeros((40, 50, 3), np.uint8), "PNG")
    large = encoded(np.zeros((120, 100, 3), np.uint8), "PNG")
    out = served["serving_default"](encoded_images=tf.constant([small, small]))
    assert out["proposal_boxes"].shape[0] == 2
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"elements\] \[1\] .*more than the limit of 10000"):
        served["serving_default"](encoded_images=tf.constant([small, large]))


def test_a_corrupt_image_in_a_batch_is_named_by_its_index(served):
    photo, _ = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    good = tf.io.encode_jpeg(photo[:80, :90]).numpy()
    header_cut = good[:good.find(b"\xff\xc0")]  # no frame header: the size is unreadable
    data_cut = good[:good.find(b"\xff\xda") + 100]  # the headers are whole, the scan is cut short
    np.testing.assert_array_equal(header_size(tf.constant(data_cut)), [80, 90])
    out = served["serving_default"](encoded_images=tf.constant([good, good, good]))
    assert out["proposal_boxes"].shape[0] == 3
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"elements\] \[1 3\] \[have an unreadable image header"):
        served["serving_default"](encoded_images=tf.constant([good, header_cut, good, header_cut]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"elements\] \[0 2\] \[could not be decoded"):
        served["serving_default"](encoded_images=tf.constant([data_cut, good, data_cut]))


@pytest.mark.parametrize("bad", [b"\xff\xfe\x00garbage\x80\x81", b"\x0a\x05hello",
                                 tf.train.Example().SerializeToString()])
def test_malformed_tf_examples_are_invalid_argument_naming_the_element(served, bad):
    photo, _ = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    example = tf.train.Example(features=tf.train.Features(feature={"image/encoded": tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[tf.io.encode_jpeg(photo[:50, :60]).numpy()]))})).SerializeToString()
    assert served["tf_example"](serialized_examples=tf.constant([example]))["num_proposals"].shape == (1,)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"serialized_examples: elements\] \[1\] \[are not tf.train.Example protos"):
        served["tf_example"](serialized_examples=tf.constant([example, bad]))


def test_sample_rois_rejects_nan_and_inverted_gt(served):
    proposals = tf.constant([[[0, 0, 10, 10], [5, 5, 20, 20]]], tf.float32)
    good = dict(proposals=proposals, num_proposals=tf.constant([2]), gt_classes=tf.constant([[1]]))
    assert served["sample_rois"](gt_boxes=tf.constant([[[0, 0, 10, 12]]], tf.float32), **good)["rois"].shape[1] == 128
    with pytest.raises(tf.errors.InvalidArgumentError, match="gt_boxes contain NaN"):
        served["sample_rois"](gt_boxes=tf.constant([[[0, 0, np.nan, 12]]], tf.float32), **good)
    with pytest.raises(tf.errors.InvalidArgumentError, match="gt_boxes contain inverted boxes"):
        served["sample_rois"](gt_boxes=tf.constant([[[0, 0, 10, -12]]], tf.float32), **good)


def test_fuzzed_jpegs_get_a_result_or_invalid_argument(served):
    """300 seeded mutations (byte flips, truncations, insertions, header edits) of a real photo."""
    photo, _ = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    original = tf.io.encode_jpeg(photo[:96, :96]).numpy()
    rng = np.random.default_rng(2026)
    outcomes = {"ok": 0, "invalid": 0}
    for _ in range(300):
        data = bytearray(original)
        kind = rng.integers(4)
        if kind == 0:
            for position in rng.integers(0, len(data), size=rng.integers(1, 20)):
                data[position] = rng.integers(256)
        elif kind == 1:
            data = data[:rng.integers(0, len(data))]
        elif kind == 2:
            position = rng.integers(0, len(data))
            data[position:position] = bytes(rng.integers(0, 256, size=rng.integers(1, 64)).astype(np.uint8))
        else:  # the SOF header: height / width bytes
            start = original.find(b"\xff\xc0") + 5
            data[start:start + 4] = bytes(rng.integers(0, 256, size=4).astype(np.uint8))
        try:
            out = served["serving_default"](encoded_images=tf.constant([bytes(data)]))
            assert np.all(np.isfinite(out["proposal_boxes"].numpy()))
            outcomes["ok"] += 1
        except tf.errors.InvalidArgumentError:
            outcomes["invalid"] += 1
    assert outcomes["ok"] + outcomes["invalid"] == 300 and outcomes["ok"] > 0 and outcomes["invalid"] > 0


def test_a_batch_mixing_header_and_data_failures_names_each_kind(served):
    photo, _ = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    good = tf.io.encode_jpeg(photo[:80, :90]).numpy()
    header_cut = good[:good.find(b"\xff\xc0")]
    data_cut = good[:good.find(b"\xff\xda") + 100]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"elements\] \[2\] \[have an unreadable image header"):
        served["serving_default"](encoded_images=tf.constant([good, data_cut, header_cut]))


def test_many_threads_on_one_loaded_saved_model_get_the_single_thread_results(served):
    from concurrent.futures import ThreadPoolExecutor

    photo, _ = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    rng = np.random.default_rng(5)
    requests = []
    for index in range(12):
        y, x = rng.integers(0, 300, 2)
        crop = np.ascontiguousarray(photo[y:y + 60 + index, x:x + 70])
        requests.append([encoded(crop, "JPEG"), encoded(crop[::-1], "PNG")][: 1 + index % 2])
    alone = [served["serving_default"](encoded_images=tf.constant(r))["proposal_boxes"].numpy() for r in requests]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda r: served["serving_default"](encoded_images=tf.constant(r))[
            "proposal_boxes"].numpy(), requests * 3))
    for index, boxes in enumerate(together):
        np.testing.assert_array_equal(boxes, alone[index % len(requests)])


def test_a_request_is_bounded_in_elements_in_pixels_and_gifs_are_refused(tmp_path):
    """The served graph's memory: a request of more than max_batch_size elements, or whose images together hold
    more than max_request_pixels (read from the headers, before decoding), is refused by name; so is a GIF, whose
    decoded size its header cannot bound (frames larger than its screen)."""
    model = rpn_tf.RPNModel((64, 64), rpn_tf.AnchorConfig(stride=16, scales=(2.0,)), backbone="simple",
                            head_channels=8)
    path = export_saved_model(model, str(tmp_path), "rpn", max_pixels=100 * 100, max_batch_size=3,
                              max_request_pixels=150 * 100)
    served = tf.saved_model.load(path).signatures
    small = encoded(np.zeros((40, 50, 3), np.uint8), "PNG")  # 2 000 pixels
    large = encoded(np.zeros((100, 100, 3), np.uint8), "PNG")  # 10 000 pixels: within max_pixels
    assert served["serving_default"](encoded_images=tf.constant([small, large]))["proposal_boxes"].shape[0] == 2
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"a request of\] \[4\] \[elements, more than the limit of 3"):
        served["serving_default"](encoded_images=tf.constant([small] * 4))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"a request of\] \[4\] \[elements"):
        served["image_tensor"](images=tf.zeros([4, 20, 20, 3], tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"hold\] \[20000\] \[pixels together, more than the limit "
                                                             r"of 15000"):
        served["serving_default"](encoded_images=tf.constant([large, large]))
    gif = encoded(np.zeros((10, 10, 3), np.uint8), "GIF")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"elements\] \[1\] \[are GIF images, which are not served"):
        served["serving_default"](encoded_images=tf.constant([small, gif]))
    with open(os.path.join(path, "assets.extra", "rpn_tf_export.json")) as file:
        record = json.load(file)
    assert record["max_batch_size"] == 3 and record["max_request_pixels"] == 15000 and record["nms"] == "combined"
