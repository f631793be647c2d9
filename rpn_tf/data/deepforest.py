"""The real data bundled with the PyPI package ``deepforest`` (MIT licence): aerial RGB images with tree-crown
boxes in VOC XML. Only its ``data/`` folder is read; ``deepforest`` itself is never imported (it needs PyTorch).

Install it without its dependencies: ``pip install --no-deps deepforest==2.1.0``.

Images used by rpn-tf: ``2019_YELL_2_528000_4978000_image_crop2`` (2299×2472, 574 trees) and
``2019_YELL_2_541000_4977000_image_crop`` (1249×1035, 279 trees) for training, ``OSBS_029`` (400×400, 61 trees)
for evaluation.
"""

from __future__ import annotations

import importlib.util
import os
from typing import List, Optional

import numpy as np
import tensorflow as tf

from rpn_tf.data.records import SkipReport, check_boxes, check_on_error, file_dataset, verify_image_file
from rpn_tf.data.voc import VocAnnotation, read_voc_xml

DEEPFOREST_INSTALL_HINT = "pip install --no-deps deepforest==2.1.0"
TRAIN_IMAGES = ("2019_YELL_2_528000_4978000_image_crop2", "2019_YELL_2_541000_4977000_image_crop")
EVAL_IMAGE = "OSBS_029"


def deepforest_data_dir() -> str:
    """Path of the installed ``deepforest/data`` folder, found without importing the package."""
    spec = importlib.util.find_spec("deepforest")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the deepforest package is not installed; install its data with: "
                                f"{DEEPFOREST_INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        data_dir = os.path.join(location, "data")
        if os.path.isdir(data_dir):
            return data_dir
    raise FileNotFoundError(f"deepforest is installed but has no data/ folder; reinstall: {DEEPFOREST_INSTALL_HINT}")


def load_deepforest_image(name: str, data_dir: str | None = None):
    """Returns ``(image uint8 [H, W, 3] numpy, VocAnnotation)`` for ``name`` (e.g. ``"OSBS_029"``)."""
    data_dir = data_dir or deepforest_data_dir()
    xml_path = os.path.join(data_dir, name + ".xml")
    png_path = os.path.join(data_dir, name + ".png")
    for path in (xml_path, png_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found in {data_dir}")
    annotation: VocAnnotation = read_voc_xml(xml_path)
    image = tf.io.decode_png(tf.io.read_file(png_path), channels=3).numpy()
    if image.shape[:2] != annotation.image_size:
        raise ValueError(f"{png_path} is {image.shape[:2]} but {xml_path} says {annotation.image_size}")
    return np.ascontiguousarray(image), annotation


def from_deepforest(names: Optional[List[str]] = None, num_parallel_calls=tf.data.AUTOTUNE, on_error="raise",
                    report: Optional[SkipReport] = None):
    """The deepforest images (VOC XML beside PNGs) as an element dataset (class 1 = tree).

    A missing image or annotation, malformed XML or boxes outside the image raise ``ValueError`` /
    ``FileNotFoundError`` naming the image; with ``on_error="skip"`` the image is left out instead, named in a
    warning and in ``report`` (a ``SkipReport`` to fill, optional)."""
    check_on_error(on_error)
    data_dir = deepforest_data_dir()
    names = names or list(TRAIN_IMAGES)
    report = SkipReport() if report is None else report
    records = []
    for name in names:
        try:
            png = os.path.join(data_dir, name + ".png")
            if not os.path.exists(png):
                raise FileNotFoundError(f"deepforest image {name!r}: {png} not found")
            annotation = read_voc_xml(os.path.join(data_dir, name + ".xml"))
            check_boxes(annotation.boxes, annotation.image_size, name)
            if on_error == "skip":  # corrupt pixel data is found here, named, rather than mid-epoch
                verify_image_file(png, name)
        except (ValueError, OSError) as error:
            if on_error == "raise":
                raise
            report.skipped[name] = str(error)
            continue
        records.append((png, annotation.boxes, [1] * len(annotation.boxes)))
    report.log(data_dir)
    return file_dataset(records, num_parallel_calls)
