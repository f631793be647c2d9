"""TensorFlow Serving client helpers: gRPC ``PredictRequest``s and REST ``:predict`` bodies for every signature
of an rpn-tf export, and parsers that turn the responses into NumPy arrays.

gRPC: ``grpc_predict("localhost:8500", predict_request("rpn", "serving_default", encoded_images=[jpeg]))``.
REST: ``rest_predict("http://localhost:8501", "rpn", rest_body("serving_default", encoded_images=[jpeg]))``.
"""

from __future__ import annotations

import base64
import json
import urllib.request

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

# The inputs of each signature, with their dtypes (see rpn_tf.serving.module).
SIGNATURE_INPUTS = {
    "serving_default": {"encoded_images": tf.string},
    "image_tensor": {"images": tf.uint8},
    "tf_example": {"serialized_examples": tf.string},
    "sample_rois": {"proposals": tf.float32, "num_proposals": tf.int32, "gt_boxes": tf.float32,
                    "gt_classes": tf.int32},
}


def _check_inputs(signature_name, inputs):
    if signature_name not in SIGNATURE_INPUTS:
        raise ValueError(f"unknown signature {signature_name!r}; rpn-tf exports {sorted(SIGNATURE_INPUTS)}")
    expected = set(SIGNATURE_INPUTS[signature_name])
    if set(inputs) != expected:
        raise ValueError(f"signature {signature_name!r} takes inputs {sorted(expected)}, got {sorted(inputs)}")


def predict_request(model_name, signature_name="serving_default", **inputs) -> predict_pb2.PredictRequest:
    """A gRPC ``PredictRequest``; ``inputs`` are array-likes (bytes lists for string inputs)."""
    _check_inputs(signature_name, inputs)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for key, value in inputs.items():
        dtype = SIGNATURE_INPUTS[signature_name][key]
        array = np.asarray(value, dtype=object) if dtype == tf.string else np.asarray(value)
        request.inputs[key].CopyFrom(tf.make_tensor_proto(array, dtype=dtype))
    return request


def _json_value(value, dtype):
    if dtype == tf.string:
        return [{"b64": base64.b64encode(item).decode("ascii")} for item in value]
    return np.asarray(value).tolist()


def rest_body(signature_name="serving_default", **inputs) -> dict:
    """A REST ``:predict`` body in the columnar ``inputs`` format; bytes become ``{"b64": ...}``."""
    _check_inputs(signature_name, inputs)
    return {"signature_name": signature_name,
            "inputs": {key: _json_value(value, SIGNATURE_INPUTS[signature_name][key])
                       for key, value in inputs.items()}}


def parse_predict_response(response) -> dict:
    """``PredictResponse`` → dict of NumPy arrays."""
    return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}


def parse_rest_response(body) -> dict:
    """REST response (dict or JSON text) in the columnar format → dict of NumPy arrays."""
    if isinstance(body, (str, bytes)):
        body = json.loads(body)
    if "error" in body:
        raise RuntimeError(f"TensorFlow Serving returned an error: {body['error']}")
    outputs = body["outputs"]
    if not isinstance(outputs, dict):  # a signature with a single output
        return {"output": np.asarray(outputs)}
    return {key: np.asarray(value) for key, value in outputs.items()}


def grpc_predict(target, request, timeout=30.0) -> dict:
    """Sends ``request`` to ``target`` (``host:port``) over gRPC and parses the response."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return parse_predict_response(stub.Predict(request, timeout=timeout))


def rest_predict(base_url, model_name, body, timeout=30.0) -> dict:
    """POSTs ``body`` to ``{base_url}/v1/models/{model_name}:predict`` and parses the response."""
    request = urllib.request.Request(f"{base_url.rstrip('/')}/v1/models/{model_name}:predict",
                                     data=json.dumps(body).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return parse_rest_response(response.read())
