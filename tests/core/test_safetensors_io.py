"""The no-mmap safetensors reader: same tensors as safetensors' own reader, own memory, one-line errors."""
import pytest
import torch
from safetensors.torch import load_file as reference_load, save_file

from controlnet_core.errors import CheckpointError
from controlnet_core.formats import read_state_dict
from controlnet_core.safetensors_io import load_file

TENSORS = {"f32": torch.randn(3, 5), "f16": torch.randn(4).half(), "bf16": torch.randn(2, 2).bfloat16(),
           "fp8": torch.randn(8, 2).to(torch.float8_e4m3fn), "i64": torch.arange(6).reshape(2, 3),
           "b": torch.tensor([True, False]), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)}


@pytest.fixture
def file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(TENSORS, str(path), metadata={"format": "pt"})
    return path


def test_equals_safetensors_reader(file):
    ours, ref = load_file(file), reference_load(str(file))
    assert set(ours) == set(ref)
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape
        assert torch.equal(ours[k].reshape(-1).view(torch.uint8), ref[k].reshape(-1).view(torch.uint8)), k


def test_tensors_survive_the_file_changing(file):
    """Tensors own their memory: truncating/overwriting the file afterwards changes nothing (mmap would SIGBUS)."""
    ours = load_file(file)
    file.write_bytes(b"")
    assert torch.equal(ours["f32"], TENSORS["f32"]) and torch.equal(ours["i64"], TENSORS["i64"])
    storages = {t.untyped_storage().data_ptr() for t in ours.values() if t.numel()}
    assert len(storages) == sum(1 for t in ours.values() if t.numel())  # one buffer each, no shared storage


@pytest.mark.parametrize("keep", [0, 5, 20, -7])
def test_truncated_file_is_one_error_naming_it(file, keep):
    data = file.read_bytes()
    file.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(CheckpointError) as info:
        read_state_dict(file) if keep < 0 else load_file(file)
    message = str(info.value)
    assert str(file) in message and "\n" not in message and "download it again" in message


def test_garbage_header(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes((10).to_bytes(8, "little") + b"{not json}")
    with pytest.raises(CheckpointError, match="not JSON"):
        load_file(path)
