"""Input adapters, one import for all. Every adapter yields the same ``tf.data`` element::

    {"image": uint8 [H, W, 3], "boxes": float32 [n, 4] yxyx absolute pixels, "classes": int32 [n]}

which ``RpnTargetEncoder`` maps directly (``dataset.map(encoder)``). Images are read and decoded lazily in
``dataset.map(..., num_parallel_calls=AUTOTUNE)``; only annotations are held in memory.

Classes: 0 is background in rpn-tf, so object classes start at 1 (TFDS labels are shifted by +1; VOC names map
to 1..K in ``class_names`` order; COCO category ids are kept as they are, they start at 1, or renumbered 1..K with
``from_coco(..., category_ids="contiguous")``).

Bad input raises an error naming the file or record. Adapters reading annotation files take
``on_error="skip"`` to drop bad records instead; the number dropped (and why) is in the returned
``SkipReport`` and is logged, so nothing disappears silently.

Modules: ``records`` (shared pieces), ``tfds``, ``od_api`` (TF Object Detection API TFRecords), ``coco``, ``voc``,
``tiling``, ``deepforest`` (the bundled real data).
"""

from rpn_tf.data.coco import from_coco
from rpn_tf.data.deepforest import from_deepforest
from rpn_tf.data.od_api import od_example, parse_od_example, read_od_tfrecords, write_od_tfrecords
from rpn_tf.data.records import BOX_TOLERANCE, ELEMENT_SIGNATURE, SkipReport, check_boxes, decode_image_file
from rpn_tf.data.tfds import from_tfds
from rpn_tf.data.tiling import tile_dataset
from rpn_tf.data.voc import from_voc

__all__ = ["BOX_TOLERANCE", "ELEMENT_SIGNATURE", "SkipReport", "check_boxes", "decode_image_file", "from_coco",
           "from_deepforest", "from_tfds", "from_voc", "od_example", "parse_od_example", "read_od_tfrecords",
           "tile_dataset", "write_od_tfrecords"]
