"""Torch files (.pth/.ckpt/.bin/.pt) are read into their own memory, never memory-mapped (issue 13): the tensors a
server holds do not change, and cannot SIGBUS, when the file is rewritten or truncated on disk afterwards."""
import pytest
import torch

from controlnet_core.errors import CheckpointError, PreprocessError
from controlnet_core.formats import read_state_dict
from controlnet_core.preprocess.nets import read_weights

TENSORS = {"conv.weight": torch.randn(64, 32, 3, 3), "conv.bias": torch.randn(64), "steps": torch.tensor(3)}


@pytest.fixture
def pth(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(TENSORS, path)  # zip format: the one torch.load can memory-map
    return path


def _overwrite_in_place(path) -> None:
    """Same size, same inode, other bytes (as a download or copy over the old file does): a mapping would see it."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.write(b"\0" * size)


@pytest.mark.parametrize("reader", [read_state_dict, read_weights], ids=["controlnet", "preprocessor"])
def test_tensors_do_not_change_when_the_file_is_rewritten(pth, reader):
    held = reader(pth)
    _overwrite_in_place(pth)
    assert set(held) == set(TENSORS)
    for key, value in TENSORS.items():
        assert torch.equal(held[key], value), key


def test_a_truncated_file_is_an_error_naming_it_and_the_held_tensors_stay(pth):
    held = read_state_dict(pth)
    data = pth.read_bytes()
    pth.write_bytes(data[: len(data) // 2])  # truncated under the reader's feet
    assert torch.equal(held["conv.weight"], TENSORS["conv.weight"])
    with pytest.raises(CheckpointError) as info:
        read_state_dict(pth)
    assert str(pth) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(PreprocessError) as info:
        read_weights(pth)
    assert str(pth) in str(info.value)
