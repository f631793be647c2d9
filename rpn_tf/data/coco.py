"""COCO instances JSON → rpn-tf elements."""

from __future__ import annotations

import collections
import json
import os

import tensorflow as tf

from rpn_tf.data.records import SkipReport, check_boxes, check_declared_size, check_on_error, file_dataset, \
    verify_image_file


CATEGORY_IDS = ("raw", "contiguous")


def from_coco(annotation_file, image_dir, on_error="raise", num_parallel_calls=tf.data.AUTOTUNE,
              verify_images=None, category_ids="raw"):
    """COCO instances JSON (``bbox`` is ``[x, y, w, h]``) → ``(dataset, SkipReport)``.

    ``category_ids="raw"`` (default) keeps COCO's ``category_id`` as the class (COCO's run 1…90 with gaps — fine
    for an RPN, which ignores classes); ``"contiguous"`` maps the file's ``categories`` in ascending id order to
    1…K, as a detector head needs (``FasterRCNN(num_classes=K)``; detectron2 does the same), and the mapping is in
    ``report.categories`` (class → ``{"id", "name"}``). An annotation whose category is not listed is an error.

    ``iscrowd`` boxes are excluded from the elements (they mark crowds, not instances; as in COCO training practice
    they are neither positives nor counted) and counted in the report; evaluation reads them from the file itself
    (``rpn_tf.coco_eval``: ``ground_truth=annotation_file`` ignores detections on crowd regions, as ``COCOeval``
    does). Every element carries its ``image_id`` (the file's, when the file's ids are integers as COCO's), for that
    evaluation. Images without annotations are kept (all-background).
    Raised (or, with ``on_error="skip"``, skipped and counted with the reason): an annotation whose ``image_id``
    matches no image, a ``bbox`` that is not 4 numbers, a declared ``height`` / ``width`` that differs from the
    image file's, an unreadable image file, boxes outside the image. ``verify_images`` (default: on with
    ``on_error="skip"``) decodes every image once up front, so that corrupt image data is named (and skipped)
    here rather than failing later inside ``tf.data`` without the file name."""
    check_on_error(on_error)
    if category_ids not in CATEGORY_IDS:
        raise ValueError(f"category_ids must be one of {CATEGORY_IDS}, got {category_ids!r}")
    verify_images = on_error == "skip" if verify_images is None else verify_images
    try:
        with open(annotation_file) as file:
            coco = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{annotation_file}: cannot read COCO JSON: {error}") from error
    for key in ("images", "annotations"):
        if key not in coco:
            raise ValueError(f"{annotation_file}: missing '{key}'")
    report = SkipReport()
    class_of = None
    if category_ids == "contiguous":
        if not isinstance(coco.get("categories"), list) or not coco["categories"]:
            raise ValueError(f"{annotation_file}: category_ids='contiguous' needs a non-empty 'categories' list")
        listed = sorted(coco["categories"], key=lambda category: category["id"])
        class_of = {category["id"]: index + 1 for index, category in enumerate(listed)}
        report.categories = {index + 1: {"id": category["id"], "name": category.get("name")}
                             for index, category in enumerate(listed)}
    by_image = collections.defaultdict(list)
    for annotation in coco["annotations"]:
        by_image[annotation.get("image_id")].append(annotation)
    image_ids = {image.get("id") for image in coco["images"]}
    for image_id in sorted(set(by_image) - image_ids, key=str):
        for annotation in by_image.pop(image_id):
            name = f"{annotation_file}: annotation {annotation.get('id')}"
            message = f"{name}: its image_id {image_id!r} matches no entry of 'images'"
            if on_error == "raise":
                raise ValueError(message)
            report.skipped[name] = message
    records = []
    for image in coco["images"]:
        name = f"{annotation_file}: image {image.get('id')} ({image.get('file_name')})"
        try:
            for key in ("id", "file_name", "height", "width"):
                if key not in image:
                    raise ValueError(f"{name}: missing '{key}'")
            path = os.path.join(image_dir, image["file_name"])
            if not os.path.exists(path):
                raise ValueError(f"{name}: image file {path} not found")
            check_declared_size(path, (image["height"], image["width"]), name)
            if verify_images:
                verify_image_file(path, name)
            boxes, classes = [], []
            for annotation in by_image.get(image["id"], []):
                if annotation.get("iscrowd", 0):
                    report.excluded_boxes["iscrowd"] += 1
                    continue
                if "bbox" not in annotation or "category_id" not in annotation:
                    raise ValueError(f"{name}: annotation {annotation.get('id')} lacks 'bbox' or 'category_id'")
                bbox = annotation["bbox"]
                if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or \
                        not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
                    raise ValueError(f"{name}: annotation {annotation.get('id')} has bbox {bbox!r}; COCO bbox is "
                                     "[x, y, width, height], 4 numbers")
                x, y, w, h = bbox
                boxes.append([y, x, y + h, x + w])
                category = annotation["category_id"]
                if class_of is not None and category not in class_of:
                    raise ValueError(f"{name}: annotation {annotation.get('id')} has category_id {category!r}, "
                                     "which 'categories' does not list")
                classes.append(class_of[category] if class_of is not None else int(category))
            check_boxes(boxes, (image["height"], image["width"]), name)
            records.append((path, boxes, classes, image["id"]))
        except ValueError as error:
            if on_error == "raise":
                raise
            report.skipped[name] = str(error)
    report.log(annotation_file)
    ids = [record[3] for record in records]
    integer_ids = all(isinstance(i, int) and not isinstance(i, bool) for i in ids)  # COCO's are; a variant's not
    return file_dataset([record[:3] for record in records], num_parallel_calls,
                        image_ids=ids if integer_ids else None), report
