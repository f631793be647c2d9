"""Evaluation of proposals over a dataset: recall@N / AR@N, and the recall waterfall that shows where recall is lost.

Shape shorthand: B images, A anchors, M padded GT boxes, K candidates, N proposals.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from rpn_tf.modeling.metrics import ProposalRecall
from rpn_tf.ops.box_ops import box_area, clip_boxes, iou_matrix
from rpn_tf.ops.matching import valid_gt_mask

WATERFALL_TOP_NS = (100, 300, 1000)
# COCO's size ranges by box area, in input (canvas) pixels.
SIZE_RANGES = {"small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, float("inf"))}
_SCORE_BINS = 200
_LABEL_NAMES = {1: "positive", 0: "negative", -1: "ignored"}


def evaluate_recall(model, dataset, top_ns=(100, 300, 1000), batch_size=4):
    """Recall@N at IoU 0.5 / 0.7 and AR@N for each N over an element dataset (``image``, ``boxes``,
    ``classes``), from real proposals: the test-time pre-NMS count, and ``max(top_ns)`` kept after NMS.

    Returns a dict such as ``{"ar@300": …, "recall@300_iou0.5": …, "recall@300_iou0.7": …}``.
    """
    config = dataclasses.replace(model.proposal_config, post_nms_top_k_test=max(top_ns))
    metrics = [ProposalRecall(top_n=n) for n in top_ns]
    encoded = dataset.map(model.target_encoder, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)

    @tf.function
    def propose(images, valid_sizes):
        return model.propose(model(images, training=False), training=False, proposal_config=config,
                             valid_sizes=valid_sizes)

    for images, targets in encoded:
        proposals = propose(images, targets["valid_size"])
        for metric in metrics:
            metric.update_state(targets["gt_boxes"], proposals["boxes"], proposals["num_proposals"])
    results = {}
    for metric in metrics:
        results.update({key: float(value) for key, value in metric.result().items()})
    return {key: results[key] for key in sorted(results, key=lambda k: (k.split("@")[0], k))}


def _best_iou(gt_boxes, boxes, count=None):
    """``[B, M]`` best IoU of each GT box with ``boxes`` ``[B, K, 4]`` (only the first ``count`` ``[B]`` valid)."""
    iou = iou_matrix(gt_boxes, boxes)  # (B, M, K)
    if count is not None:
        valid = tf.range(tf.shape(boxes)[1])[None, :] < count[:, None]
        iou = tf.where(valid[:, None, :], iou, 0.0)
    return tf.reduce_max(tf.concat([iou, tf.zeros_like(iou[..., :1])], axis=-1), axis=-1)


def _waterfall_batch(model, images, targets, top_ns):
    """Best IoU per GT box ``[B, M]`` at every stage, plus per-label score histograms and top-N label counts."""
    gt_boxes = targets["gt_boxes"]
    valid_sizes = tf.cast(targets["valid_size"], tf.float32)
    outputs = model(images, training=False)
    logits = outputs["objectness_logits"]
    anchors = model.anchors
    best = {"all anchors": _best_iou(gt_boxes, tf.broadcast_to(anchors[None], tf.shape(outputs["box_deltas"])))}
    decoded = clip_boxes(model.target_encoder.box_coder.decode(outputs["box_deltas"], anchors[None]),
                         valid_sizes)
    best["all decoded boxes"] = _best_iou(gt_boxes, decoded)
    # Candidates in score order before NMS, after the same clip and min-size filter as the proposals.
    heights, widths = decoded[..., 2] - decoded[..., 0], decoded[..., 3] - decoded[..., 1]
    min_size = model.proposal_config.min_size
    scores = tf.where((heights >= min_size) & (widths >= min_size), tf.sigmoid(logits), -1.0)
    k = min(max(top_ns), anchors.shape[0])
    top_scores, top_index = tf.math.top_k(scores, k=k)
    top_boxes = tf.gather(decoded, top_index, batch_dims=1)
    config = dataclasses.replace(model.proposal_config, post_nms_top_k_test=max(top_ns))
    proposals = model.propose(outputs, training=False, proposal_config=config, valid_sizes=valid_sizes)
    for n in top_ns:
        count = tf.reduce_sum(tf.cast(top_scores[:, :n] >= 0.0, tf.int32), axis=1)
        best[f"top {n} by score (no NMS)"] = _best_iou(gt_boxes, top_boxes[:, :n], count)
        best[f"top {n} after NMS"] = _best_iou(gt_boxes, proposals["boxes"][:, :n],
                                               tf.minimum(proposals["num_proposals"], n))
    # Scores by label (before sampling), and the labels of the 300 best-scored anchors.
    labels, _ = model.target_encoder.label_anchors(gt_boxes, valid_sizes=valid_sizes)
    probabilities = tf.sigmoid(logits)
    bins = tf.clip_by_value(tf.cast(probabilities * _SCORE_BINS, tf.int32), 0, _SCORE_BINS - 1)
    histograms = {name: tf.math.bincount(tf.boolean_mask(bins, labels == label), minlength=_SCORE_BINS,
                                         maxlength=_SCORE_BINS)
                  for label, name in _LABEL_NAMES.items()}
    top_labels = tf.gather(labels, tf.math.top_k(logits, k=min(300, anchors.shape[0])).indices, batch_dims=1)
    top_counts = {name: tf.reduce_sum(tf.cast(top_labels == label, tf.int32)) for label, name in _LABEL_NAMES.items()}
    return best, histograms, top_counts


def _quantiles(histogram, quantiles=(0.05, 0.25, 0.5, 0.75, 0.95)):
    total = histogram.sum()
    if total == 0:
        return {f"p{int(q * 100)}": None for q in quantiles}
    cumulative = np.cumsum(histogram) / total
    return {f"p{int(q * 100)}": float((np.searchsorted(cumulative, q) + 0.5) / len(histogram)) for q in quantiles}


def recall_waterfall(model, dataset, top_ns=WATERFALL_TOP_NS, iou_thresholds=(0.5, 0.7), batch_size=2):
    """Where recall is lost, stage by stage, over an element dataset (``image``, ``boxes``, ``classes``).

    Stages: (a) all anchors, (b) all anchors decoded by the model, (c) the top N decoded boxes by score before NMS
    (after clipping and the min-size filter), (d) the top N proposals after NMS — for N in ``top_ns``. Recall at
    each IoU threshold, overall and by COCO object size (small < 32², medium < 96², large, in canvas pixels).

    Returns:
      dict: ``num_gt`` (with ``by_size``), ``stages`` (stage name → ``{"iou0.5": recall, …, "by_size": {size:
      {"iou0.5": …}}}``, in pipeline order), ``scores`` (label → count and quantiles of the objectness probability
      of the anchors labeled positive / negative / ignored before sampling) and ``top300_labels`` (how many of
      each image's 300 best-scored anchors are positive / negative / ignored, summed over images).
    """
    top_ns = tuple(sorted(int(n) for n in top_ns))
    encoded = dataset.map(model.target_encoder, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    step = tf.function(lambda images, targets: _waterfall_batch(model, images, targets, top_ns))
    best_ious, areas = {}, []
    histograms = {name: np.zeros(_SCORE_BINS, np.int64) for name in _LABEL_NAMES.values()}
    top_counts = {name: 0 for name in _LABEL_NAMES.values()}
    for images, targets in encoded:
        best, batch_histograms, batch_top = step(images, targets)
        valid = valid_gt_mask(targets["gt_boxes"]).numpy()
        areas.append(box_area(targets["gt_boxes"]).numpy()[valid])
        for stage, values in best.items():
            best_ious.setdefault(stage, []).append(values.numpy()[valid])
        for name in histograms:
            histograms[name] += batch_histograms[name].numpy()
            top_counts[name] += int(batch_top[name])
    areas = np.concatenate(areas) if areas else np.zeros([0])
    sizes = {name: (areas >= low) & (areas < high) for name, (low, high) in SIZE_RANGES.items()}

    def recalls(values, mask):
        count = int(mask.sum())
        return {f"iou{t:g}": (float((values[mask] >= t).mean()) if count else None) for t in iou_thresholds}

    stages = {}
    for stage, values in best_ious.items():
        values = np.concatenate(values)
        stages[stage] = {**recalls(values, np.ones_like(values, bool)),
                         "by_size": {name: recalls(values, mask) for name, mask in sizes.items()}}
    return {"num_gt": int(len(areas)), "num_gt_by_size": {name: int(mask.sum()) for name, mask in sizes.items()},
            "stages": stages,
            "scores": {name: {"count": int(h.sum()), **_quantiles(h)} for name, h in histograms.items()},
            "top300_labels": top_counts}


def format_waterfall(waterfall) -> str:
    """The waterfall as a text table (one row per stage)."""
    thresholds = [key for key in next(iter(waterfall["stages"].values())) if key.startswith("iou")]
    sizes = list(SIZE_RANGES)
    header = ["stage"] + [f"recall {t}" for t in thresholds] + [f"{s} {thresholds[0]}" for s in sizes]
    rows = []
    for stage, values in waterfall["stages"].items():
        by_size = [values["by_size"][s][thresholds[0]] for s in sizes]
        rows.append([stage] + [values[t] for t in thresholds] + by_size)

    def cell(value):
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    widths = [max(len(cell(row[i])) for row in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(cell(v).rjust(w) if i else cell(v).ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in [header] + rows]
    counts = waterfall["num_gt_by_size"]
    lines.append(f"GT boxes: {waterfall['num_gt']} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    for name, stats in waterfall["scores"].items():
        quantiles = ", ".join(f"{k} {cell(v)}" for k, v in stats.items() if k != "count")
        lines.append(f"objectness of {name} anchors (n={stats['count']}): {quantiles}")
    top = waterfall["top300_labels"]
    lines.append("labels of the 300 best-scored anchors: " + ", ".join(f"{k} {v}" for k, v in top.items()))
    return "\n".join(lines)


_PANEL_SIZE, _PLOT_BOX = (550, 420), (75, 55, 530, 365)  # panel width × height; plot area left, top, right, bottom
_CEILINGS = (("all anchors", (4, 4)), ("all decoded boxes", (10, 5)))  # stage, (dash, gap) in px
_CURVES = (("by score (no NMS)", "circle", (31, 119, 180)), ("after NMS", "square", (255, 127, 14)))


def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _dashed(draw, x0, x1, y, pattern, fill, width=2):
    dash, gap = pattern
    for x in range(int(x0), int(x1), dash + gap):
        draw.line([(x, y), (min(x + dash, x1), y)], fill=fill, width=width)


def _marker(draw, x, y, shape, fill, r=4):
    (draw.ellipse if shape == "circle" else draw.rectangle)([x - r, y - r, x + r, y + r], fill=fill)


def _waterfall_panel(image, origin, stages, threshold, top_ns, font):
    from PIL import Image, ImageDraw

    draw, (ox, oy) = ImageDraw.Draw(image), origin
    left, top, right, bottom = (ox + _PLOT_BOX[0], oy + _PLOT_BOX[1], ox + _PLOT_BOX[2], oy + _PLOT_BOX[3])
    low, high = np.log10(min(top_ns)), np.log10(max(top_ns))
    pad = 0.05 * (high - low) if high > low else 0.3
    x_of = lambda n: left + (np.log10(n) - low + pad) / (high - low + 2 * pad) * (right - left)
    y_of = lambda r: bottom - r / 1.02 * (bottom - top)
    for tick in np.linspace(0, 1, 6):  # y grid and labels
        y = y_of(tick)
        draw.line([(left, y), (right, y)], fill=(225, 225, 225))
        draw.text((left - 6, y), f"{tick:.1f}" if tick else "0", fill="black", font=font, anchor="rm")
    for n in top_ns:  # x grid and labels at the N values
        draw.line([(x_of(n), top), (x_of(n), bottom)], fill=(225, 225, 225))
        draw.text((x_of(n), bottom + 6), str(n), fill="black", font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, bottom + 28), "N", fill="black", font=font, anchor="mt")
    label = f"recall at IoU {threshold[3:]}"
    box = draw.textbbox((0, 0), label, font=font)
    text = Image.new("RGBA", (box[2] + 2, box[3] + 2), (255, 255, 255, 0))
    ImageDraw.Draw(text).text((0, 0), label, fill="black", font=font)
    text = text.rotate(90, expand=True)
    image.paste(text, (int(ox + 12), int((top + bottom - text.height) / 2)), text)

    entries, points = [], []  # legend entries; data points, to place the legend where it hides the fewest
    for stage, pattern in _CEILINGS:
        recall = stages[stage][threshold]
        if recall is not None:
            _dashed(draw, left + 1, right - 1, y_of(recall), pattern, (128, 128, 128))
            points += [(x, y_of(recall)) for x in np.linspace(left, right, 20)]
        entries.append((stage, lambda x, y, p=pattern: _dashed(draw, x, x + 30, y, p, (128, 128, 128))))
    for kind, shape, colour in _CURVES:
        xy = [(x_of(n), y_of(stages[f"top {n} {kind}"][threshold])) for n in top_ns
              if stages[f"top {n} {kind}"][threshold] is not None]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy:
            _marker(draw, x, y, shape, colour)
        points += xy + [(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t) for (x0, y0), (x1, y1) in zip(xy, xy[1:])
                        for t in np.linspace(0, 1, 10)]

        def sample(x, y, shape=shape, colour=colour):
            draw.line([(x, y), (x + 30, y)], fill=colour, width=2)
            _marker(draw, x + 15, y, shape, colour)

        entries.append((f"top N {kind}", sample))
    line_height = 20
    width = 50 + max(draw.textlength(name, font=font) for name, _ in entries)
    height = line_height * len(entries) + 8
    corners = [(x, y) for y in (bottom - height - 8, top + 8) for x in (right - width - 8, left + 8)]
    hidden = lambda c: sum(c[0] - 4 <= x <= c[0] + width + 4 and c[1] - 4 <= y <= c[1] + height + 4 for x, y in points)
    lx, ly = min(corners, key=hidden)
    draw.rectangle([lx, ly, lx + width, ly + height], fill="white", outline=(180, 180, 180))
    for i, (name, sample) in enumerate(entries):
        y = ly + 4 + line_height * (i + 0.5)
        sample(lx + 8, y)
        draw.text((lx + 46, y), name, fill="black", font=font, anchor="lm")


def plot_waterfall(waterfall, path, title="recall waterfall"):
    """Writes a PNG: recall vs N before / after NMS, with the all-anchors and decoded-boxes ceilings."""
    from PIL import Image, ImageDraw

    stages = waterfall["stages"]
    thresholds = [key for key in next(iter(stages.values())) if key.startswith("iou")]
    top_ns = sorted({int(name.split()[1]) for name in stages if name.startswith("top ")})
    image = Image.new("RGB", (_PANEL_SIZE[0] * len(thresholds), _PANEL_SIZE[1]), "white")
    font = _font(14)
    for i, threshold in enumerate(thresholds):
        _waterfall_panel(image, (i * _PANEL_SIZE[0], 0), stages, threshold, top_ns, font)
    ImageDraw.Draw(image).text((image.width / 2, 18), f"{title} ({waterfall['num_gt']} GT boxes)", fill="black",
                               font=_font(18), anchor="mm")
    image.save(path, format="PNG")
    return path
