"""Pictures for people: boxes on images (PNG bytes) with a legend, for the demo and the CLI.

Boxes are drawn 2 px wide at the output size (small images are enlarged first, nearest neighbour, so that a
200 px tile is readable), each set in its colour, proposals shaded by rank (the best brightest), and a legend in the
top-left corner names every set with its count.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

GREEN, RED, BLUE, YELLOW = (0, 230, 0), (255, 40, 40), (60, 120, 255), (255, 220, 0)
LINE_WIDTH = 2
MIN_OUTPUT_SIZE = 600  # the longer side of a picture is enlarged to at least this many pixels


def draw_boxes(image, box_sets, legend=True):
    """Draws yxyx pixel boxes on ``image`` (uint8 ``[H, W, 3]``) and returns PNG bytes.

    Args:
      box_sets: a list of ``(boxes [n, 4], (r, g, b) 0–255, label)`` or ``(boxes, colour, label, scores [n])``
        (the legend shows ``label (n)``, or the label with ``{count}`` replaced by n);
        with scores, boxes are drawn from the lowest score up and shaded from 35 % (lowest) to full colour
        (highest), so the best proposals stand out.
      legend: draw the legend (label and count of each set).
    """
    image = np.asarray(image, np.uint8)
    height, width = image.shape[:2]
    zoom = max(1, int(np.ceil(MIN_OUTPUT_SIZE / max(height, width, 1))))
    picture = Image.fromarray(image).resize((width * zoom, height * zoom), Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    entries = []
    for box_set in box_sets:
        boxes, colour, label = box_set[:3]
        scores = box_set[3] if len(box_set) > 3 else None
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * zoom
        order = np.arange(len(boxes))
        shades = np.ones(len(boxes))
        if scores is not None and len(boxes):
            order = np.argsort(np.asarray(scores, np.float32).reshape(-1), kind="stable")  # best drawn last
            shades[order] = np.linspace(0.35, 1.0, len(boxes))
        for index in order:
            y1, x1, y2, x2 = boxes[index]
            shade = tuple(int(round(c * shades[index])) for c in colour)
            draw.rectangle([x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)], outline=shade, width=LINE_WIDTH)
        text = label.format(count=len(boxes)) if "{count}" in label else f"{label} ({len(boxes)})"
        entries.append((text + (", brighter = higher score" if scores is not None else ""), colour))
    if legend and entries:
        _legend(draw, entries)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _legend(draw, entries):
    line_height, swatch, margin = 16, 12, 6
    text_width = max(draw.textlength(text) for text, _ in entries)
    box = [margin, margin, margin * 3 + swatch + text_width + margin, margin * 2 + line_height * len(entries)]
    draw.rectangle(box, fill=(0, 0, 0))
    for row, (text, colour) in enumerate(entries):
        top = margin * 1.5 + row * line_height
        draw.rectangle([margin * 2, top, margin * 2 + swatch, top + swatch], fill=colour)
        draw.text((margin * 3 + swatch, top), text, fill=(255, 255, 255))


def write_png(path, png_bytes):
    with open(path, "wb") as file:
        file.write(png_bytes)


def target_picture(image, gt_boxes, anchor_config, max_negatives=20, seed=0, image_size=None, resize=None):
    """The article's picture of the training targets: GT boxes, sampled positive anchors, sampled negatives.

    Args:
      image: uint8 ``[H, W, 3]``; gt_boxes: ``[n, 4]`` yxyx pixels of that image.
      anchor_config: the ``AnchorConfig`` (or multi-level config) to label.
      max_negatives: draw at most this many of the sampled negatives (all with ``None``; 128 boxes are a tangle).
      image_size, resize: the training geometry (canvas size and resize policy); default: the image's own size.
        The picture shows the canvas the network trains on.

    Returns:
      ``(png_bytes, labels_before_sampling [A], sampled_labels [A])``.
    """
    import tensorflow as tf

    from rpn_tf.data.encoder import RpnTargetEncoder

    image = np.asarray(image)
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    encoder = RpnTargetEncoder(tuple(image_size or image.shape[:2]), anchor_config, seed=seed, resize=resize,
                               max_boxes=max(len(gt_boxes), 1))
    canvas, targets = encoder(tf.convert_to_tensor(image), gt_boxes)
    boxes = targets["gt_boxes"].numpy()[:int(targets["num_boxes"])]
    before = encoder.label_anchors(boxes, valid_sizes=targets["valid_size"])[0].numpy()
    labels = targets["rpn_labels"].numpy()
    anchors = encoder.anchors.numpy()
    negatives = anchors[labels == 0][:max_negatives]
    png = draw_boxes(canvas.numpy(), [(negatives, BLUE, f"negative anchors ({{count}} of {(labels == 0).sum()} sampled)"),
                                      (anchors[labels == 1], RED, "positive anchors"),
                                      (boxes, GREEN, "ground truth")])
    return png, before, labels


def proposals_picture(image, proposals, scores, gt_boxes=None, label="proposals"):
    """Proposals (or detections: ``label``; yellow, shaded by rank) and, when given, GT boxes (green) on ``image``:
    PNG bytes."""
    sets = [(proposals, YELLOW, label, scores)]
    if gt_boxes is not None:
        sets.append((gt_boxes, GREEN, "ground truth"))
    return draw_boxes(image, sets)
