"""Pascal VOC: XML annotations → yxyx pixel boxes, and VOC-layout folders → rpn-tf elements.

VOC stores ``xmin, ymin, xmax, ymax`` (1-based pixel indices in the original VOC devkit). rpn-tf reads the
numbers as they are, as continuous pixel coordinates with no +1 (see docs/conventions.md).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import xml.etree.ElementTree as ElementTree
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from rpn_tf.data.records import SkipReport, check_boxes, check_declared_size, check_on_error, file_dataset, \
    verify_image_file


@dataclasses.dataclass(frozen=True)
class VocAnnotation:
    """One VOC file: ``boxes`` float32 ``[n, 4]`` yxyx pixels, ``names`` the object names, ``difficult`` bool
    ``[n]``, ``image_size`` ``(height, width)`` from ``<size>`` and ``filename`` from ``<filename>``."""

    filename: str
    image_size: Tuple[int, int]
    boxes: np.ndarray
    names: Tuple[str, ...]
    difficult: np.ndarray


def _number(element, tag, path):
    node = element.find(tag)
    if node is None or node.text is None:
        raise ValueError(f"{path}: <{tag}> is missing")
    try:
        return float(node.text)
    except ValueError as error:
        raise ValueError(f"{path}: <{tag}> is not a number: {node.text!r}") from error


def read_voc_xml(path) -> VocAnnotation:
    """Parses a VOC annotation file; raises ``ValueError`` naming the file and the problem on malformed input
    (missing tags, non-numeric or inverted boxes)."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise ValueError(f"{path}: cannot read VOC XML: {error}") from error
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: <size> is missing")
    image_size = (int(_number(size, "height", path)), int(_number(size, "width", path)))
    boxes, names, difficult = [], [], []
    for index, obj in enumerate(root.findall("object")):
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{path}: object {index} has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise ValueError(f"{path}: object {index} has an inverted box {(xmin, ymin, xmax, ymax)}")
        boxes.append([ymin, xmin, ymax, xmax])
        name = obj.find("name")
        if name is None or not (name.text or "").strip():
            raise ValueError(f"{path}: object {index} has no <name> (an empty class name)")
        names.append(name.text.strip())
        flag = obj.find("difficult")
        difficult.append(flag is not None and (flag.text or "0").strip() == "1")
    filename = root.findtext("filename") or ""
    return VocAnnotation(filename, image_size, np.asarray(boxes, np.float32).reshape(-1, 4), tuple(names),
                         np.asarray(difficult, bool))


def from_voc(root, class_names: Optional[Sequence[str]] = None, include_difficult=False, on_error="raise",
             num_parallel_calls=tf.data.AUTOTUNE, verify_images=None):
    """A VOC-layout folder (``Annotations/*.xml`` + ``JPEGImages/``) → ``(dataset, SkipReport, class_names)``.

    ``difficult`` objects are excluded by default, as in VOC practice (they are not scored in VOC evaluation and
    detectron2's VOC loader drops them); ``include_difficult=True`` keeps them. Class ids are 1 + the index in
    ``class_names`` (default: the sorted names found). An object of an unknown class is an error. ``verify_images``
    (default: on with ``on_error="skip"``) decodes every image once up front, naming (and skipping) corrupt files."""
    check_on_error(on_error)
    verify_images = on_error == "skip" if verify_images is None else verify_images
    xml_files = sorted(glob.glob(os.path.join(root, "Annotations", "*.xml")))
    if not xml_files:
        raise FileNotFoundError(f"no Annotations/*.xml under {root}")
    report = SkipReport()
    annotations = []
    for path in xml_files:
        try:
            annotations.append((path, read_voc_xml(path)))
        except ValueError as error:
            if on_error == "raise":
                raise
            report.skipped[path] = str(error)
    if class_names is None:
        class_names = sorted({name for _, annotation in annotations for name in annotation.names})
    class_ids = {name: index + 1 for index, name in enumerate(class_names)}
    records = []
    for path, annotation in annotations:
        try:
            image_name = annotation.filename or os.path.splitext(os.path.basename(path))[0] + ".jpg"
            image_path = os.path.join(root, "JPEGImages", image_name)
            if not os.path.exists(image_path):
                raise ValueError(f"{path}: image {image_path} not found")
            check_declared_size(image_path, annotation.image_size, path)
            if verify_images:
                verify_image_file(image_path, path)
            keep = np.ones(len(annotation.boxes), bool) if include_difficult else ~annotation.difficult
            report.excluded_boxes["difficult"] += int(np.sum(~keep))
            unknown = sorted({n for n, k in zip(annotation.names, keep) if k and n not in class_ids})
            if unknown:
                raise ValueError(f"{path}: unknown class names {unknown}")
            check_boxes(annotation.boxes[keep], annotation.image_size, path)
            records.append((image_path, annotation.boxes[keep],
                            [class_ids[n] for n, k in zip(annotation.names, keep) if k]))
        except ValueError as error:
            if on_error == "raise":
                raise
            report.skipped[path] = str(error)
    report.log(root)
    return file_dataset(records, num_parallel_calls), report, list(class_names)
