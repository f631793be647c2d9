"""rpn-tf export: SavedModels for TensorFlow Serving (``export_saved_model``) and a Serving client (``client``)."""

from export.exporter import (IMAGE_SIGNATURES, WARMUP_FILE, RpnServingModule, export_saved_model, load_model,
                             warmup_requests, write_warmup_records)

__all__ = ["IMAGE_SIGNATURES", "RpnServingModule", "WARMUP_FILE", "export_saved_model", "load_model",
           "warmup_requests", "write_warmup_records"]
