"""Serving: the served graph (``module``), the SavedModel exporter (``exporter``) and a TF Serving client
(``client``). The deployment kit — TF Serving configs and the export script — is the repository's ``export/``."""

from rpn_tf.serving.exporter import WARMUP_FILE, export_saved_model, load_model, warmup_requests, \
    write_warmup_records
from rpn_tf.serving.module import IMAGE_SIGNATURES, RpnServingModule

__all__ = ["IMAGE_SIGNATURES", "RpnServingModule", "WARMUP_FILE", "export_saved_model", "load_model",
           "warmup_requests", "write_warmup_records"]
