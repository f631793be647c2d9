"""Data: input adapters (``adapters``: TFDS, TF OD API TFRecords, COCO, VOC, tiling, deepforest), GT box
handling (``gt_boxes``), resizing (``resize``) and the ``tf.data`` target encoder (``encoder``)."""

from rpn_tf.data.deepforest import DEEPFOREST_INSTALL_HINT, deepforest_data_dir, load_deepforest_image
from rpn_tf.data.voc import VocAnnotation, read_voc_xml

__all__ = ["DEEPFOREST_INSTALL_HINT", "VocAnnotation", "deepforest_data_dir", "load_deepforest_image",
           "read_voc_xml"]
