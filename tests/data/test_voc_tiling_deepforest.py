import numpy as np
import tensorflow as tf
import pytest

from rpn_tf.data import deepforest, read_voc_xml
from rpn_tf.data.tiling import tile_dataset

VOC = """<annotation><filename>a.png</filename><size><width>50</width><height>40</height><depth>3</depth></size>
<object><name>Tree</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>11</xmax><ymax>22</ymax></bndbox></object>
<object><name>Tree</name><difficult>1</difficult><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>7</xmax><ymax>8</ymax></bndbox></object>
</annotation>"""


def test_read_voc_xml(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(VOC)
    annotation = read_voc_xml(path)
    assert annotation.image_size == (40, 50)
    np.testing.assert_array_equal(annotation.boxes, [[2, 1, 22, 11], [6, 5, 8, 7]])
    np.testing.assert_array_equal(annotation.difficult, [False, True])
    assert annotation.names == ("Tree", "Tree")


@pytest.mark.parametrize("text, message", [
    (VOC.replace("<ymax>22</ymax>", ""), "ymax"),
    (VOC.replace("<xmax>11</xmax>", "<xmax>abc</xmax>"), "not a number"),
    (VOC.replace("<xmax>11</xmax>", "<xmax>0</xmax>"), "inverted"),
    ("<annotation>", "cannot read"),
])
def test_malformed_voc_names_file(tmp_path, text, message):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        read_voc_xml(path)
    assert "bad.xml" in str(error.value)


def test_tiling_keeps_half_visible_boxes_and_reports_cuts():
    image = np.arange(100 * 150 * 3, dtype=np.uint8).reshape(100, 150, 3)
    boxes = np.array([[10, 10, 30, 30], [40, 55, 60, 75], [0, 90, 20, 110]], np.float32)
    tiles = tiled(image, boxes, tile_size=64, overlap=16, min_visible=0.5)
    assert [tuple(t["tile_origin"]) for t in tiles] == [(0, 0), (0, 48), (0, 86), (36, 0), (36, 48), (36, 86)]
    first = tiles[0]
    np.testing.assert_array_equal(first["image"], image[:64, :64])
    # box 1 has x 55..75 → 9/20 inside tile 0 (< 50 %): cut; box 0 whole
    np.testing.assert_array_equal(first["boxes"], [[10, 10, 30, 30]])
    np.testing.assert_array_equal(first["classes"], [1])
    assert first["boxes_cut"] == 1
    np.testing.assert_array_equal(tiles[1]["boxes"], [[40, 7, 60, 27], [0, 42, 20, 62]])
    np.testing.assert_array_equal(tiles[1]["classes"], [2, 3])
    assert tiles[1]["boxes_cut"] == 0
    # Every box is in some tile or counted as cut from the tiles that show part of it.
    assert sum(len(t["boxes"]) for t in tiles) + sum(int(t["boxes_cut"]) for t in tiles) >= len(boxes)
    small = tiled(image[:30, :40], boxes[:1], tile_size=64, overlap=0)
    assert len(small) == 1 and small[0]["image"].shape == (64, 64, 3)
    np.testing.assert_array_equal(small[0]["image"][30:], 0)
    with pytest.raises(ValueError, match="overlap"):
        tiled(image, boxes, tile_size=64, overlap=64)


def tiled(image, boxes, **kwargs):
    element = {"image": image, "boxes": boxes, "classes": np.arange(1, len(boxes) + 1, dtype=np.int32)}
    return list(tile_dataset(tf.data.Dataset.from_tensors(element), **kwargs).as_numpy_iterator())


def test_real_deepforest_file():
    image, annotation = deepforest.load_deepforest_image(deepforest.EVAL_IMAGE)
    assert image.shape == (400, 400, 3) and image.dtype == np.uint8
    assert len(annotation.boxes) == 61
    assert np.all(annotation.boxes[:, 2] > annotation.boxes[:, 0])
    with pytest.raises(FileNotFoundError, match="not found"):
        deepforest.load_deepforest_image("no_such_image")


def test_deepforest_names_a_missing_image_or_skips_it_with_a_report():
    import pytest

    from rpn_tf.data import adapters

    with pytest.raises(FileNotFoundError, match="deepforest image 'NO_SUCH_IMAGE'"):
        adapters.from_deepforest(["OSBS_029", "NO_SUCH_IMAGE"])
    report = adapters.SkipReport()
    dataset = adapters.from_deepforest(["OSBS_029", "NO_SUCH_IMAGE"], on_error="skip", report=report)
    assert [element["boxes"].shape[0] for element in dataset] == [61]
    assert list(report.skipped) == ["NO_SUCH_IMAGE"]
