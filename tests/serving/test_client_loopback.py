"""The TF Serving client end to end over real loopback connections (gRPC and REST), without Docker."""

import numpy as np
import pytest
import tensorflow as tf

import rpn_tf
from rpn_tf.data import deepforest
from rpn_tf.serving import client, export_saved_model
from loopback import call_signature, serve


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = rpn_tf.RPNModel((96, 96), rpn_tf.AnchorConfig(stride=16, scales=(1.0, 2.0)), backbone="simple",
                            head_channels=8)
    path = export_saved_model(model, str(tmp_path_factory.mktemp("serving")), "rpn")
    with serve(path) as (grpc_target, rest_url):
        yield tf.saved_model.load(path).signatures, grpc_target, rest_url


def photo():
    image, _ = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    return image[:120, :160]


def requests():
    image = photo()
    jpeg = tf.io.encode_jpeg(image).numpy()
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg]))})).SerializeToString()
    return {
        "serving_default": {"encoded_images": [jpeg, tf.io.encode_png(image[:60]).numpy()]},
        "image_tensor": {"images": image[None]},
        "tf_example": {"serialized_examples": [example]},
        "sample_rois": {"proposals": np.array([[[0, 0, 20, 20], [30, 30, 60, 60]]], np.float32),
                        "num_proposals": np.array([2], np.int32),
                        "gt_boxes": np.array([[[0, 0, 20, 22]]], np.float32), "gt_classes": np.array([[3]], np.int32)},
    }


@pytest.mark.parametrize("signature", ["serving_default", "image_tensor", "tf_example", "sample_rois"])
def test_grpc_and_rest_give_what_the_saved_model_gives(served, signature):
    signatures, grpc_target, rest_url = served
    inputs = requests()[signature]
    expected = call_signature(signatures, signature, inputs)
    over_grpc = client.grpc_predict(grpc_target, client.predict_request("rpn", signature, **inputs))
    over_rest = client.rest_predict(rest_url, "rpn", client.rest_body(signature, **inputs))
    for key, value in expected.items():
        np.testing.assert_array_equal(over_grpc[key], value, err_msg=key)
        np.testing.assert_allclose(over_rest[key], value, rtol=1e-6, err_msg=key)  # JSON floats


def test_errors_come_back_as_errors(served):
    _, grpc_target, rest_url = served
    import grpc

    with pytest.raises(grpc.RpcError) as error:
        client.grpc_predict(grpc_target, client.predict_request("rpn", encoded_images=[b"not an image"]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "encoded_images" in error.value.details()
    with pytest.raises(Exception, match="400|Bad Request"):
        client.rest_predict(rest_url, "rpn", client.rest_body(encoded_images=[b"not an image"]))
    with pytest.raises(grpc.RpcError) as error:
        client.grpc_predict(grpc_target, client.predict_request("other", encoded_images=[b"x"]))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
