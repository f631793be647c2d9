"""Pascal VOC XML annotations → yxyx pixel boxes.

VOC stores ``xmin, ymin, xmax, ymax`` (1-based pixel indices in the original VOC devkit). rpn-tf reads the
numbers as they are, as continuous pixel coordinates with no +1 (see docs/conventions.md).
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ElementTree
from typing import Tuple

import numpy as np


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
        names.append(name.text if name is not None and name.text else "")
        flag = obj.find("difficult")
        difficult.append(flag is not None and (flag.text or "0").strip() == "1")
    filename = root.findtext("filename") or ""
    return VocAnnotation(filename, image_size, np.asarray(boxes, np.float32).reshape(-1, 4), tuple(names),
                         np.asarray(difficult, bool))
