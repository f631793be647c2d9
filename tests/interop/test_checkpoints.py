"""Reading PyTorch checkpoints without torch: files written by torch itself (zip and legacy format) and by the
safetensors library, compared with the arrays they hold; files that would run code are refused without running it;
truncated files are named."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from rpn_tf.interop.checkpoints import load_state_dict

HERE = os.path.join(os.path.dirname(__file__), "..", "golden", "torch_checkpoints")


@pytest.mark.parametrize("name, expected", [("zip_format.pth", "zip_format.npz"),
                                            ("legacy_format.pth", "legacy_format.npz"),
                                            ("sample.safetensors", "sample_safetensors.npz")])
def test_files_written_by_torch_and_safetensors_read_as_their_arrays(name, expected):
    arrays = load_state_dict(os.path.join(HERE, name))
    want = np.load(os.path.join(HERE, expected))
    assert sorted(arrays) == sorted(want.files) and len(arrays) >= 7
    for key in want.files:
        assert arrays[key].shape == want[key].shape, key
        assert arrays[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(arrays[key], want[key], err_msg=key)
    # views of one storage (a transpose, an offset slice) come out as their own values
    np.testing.assert_array_equal(arrays["conv.weight_t"], arrays["conv.weight"].T)
    if name.endswith(".pth"):
        assert arrays["idx"].max() >= 2 ** 40  # int64 kept whole


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch rpn_tf_pwned",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"weight": _RunsCode()}, protocol=2))
    with pytest.raises(ValueError, match=r"holds posix\.system, which is not part of a tensor state dict"):
        load_state_dict(str(path))
    assert not (tmp_path / "rpn_tf_pwned").exists()


def test_truncated_or_foreign_files_are_named(tmp_path):
    data = open(os.path.join(HERE, "zip_format.pth"), "rb").read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="cut.pth"):
        load_state_dict(str(cut))
    legacy = open(os.path.join(HERE, "legacy_format.pth"), "rb").read()
    cut.write_bytes(legacy[:-20])
    with pytest.raises(ValueError, match="truncated"):
        load_state_dict(str(cut))
    other = tmp_path / "notes.pth"
    other.write_bytes(b"hello world")
    with pytest.raises(ValueError, match="neither a torch checkpoint"):
        load_state_dict(str(other))
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_state_dict(str(tmp_path / "missing.pth"))
    empty = tmp_path / "empty.pth"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x/data.pkl", pickle.dumps({"epoch": 3}, protocol=2))
    empty.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="no tensor state dict"):
        load_state_dict(str(empty))


def test_a_crafted_stride_cannot_read_outside_its_storage(tmp_path):
    """A view whose stride points before its storage (or past it) is refused: numpy's as_strided would read
    whatever memory lies there."""
    import struct

    with zipfile.ZipFile(os.path.join(HERE, "zip_format.pth")) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    pickled = next(name for name in members if name.endswith("data.pkl"))
    stride = b"K\x04K\x01\x86"  # conv.weight's stride (4, 1), the first in the file
    assert stride in members[pickled]
    for crafted, message in ((b"J" + struct.pack("<i", -100000) + b"K\x01\x86", "negative"),
                             (b"J" + struct.pack("<i", 100000) + b"K\x01\x86", "runs past its storage")):
        members_crafted = {**members, pickled: members[pickled].replace(stride, crafted, 1)}
        path = tmp_path / "crafted.pth"
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members_crafted.items():
                archive.writestr(name, data)
        with pytest.raises(ValueError, match=message):
            load_state_dict(str(path))
