"""The shared loader of the learned preprocessors' weights (controlnet_core/preprocess/nets/__init__.py)."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from controlnet_core.errors import PreprocessError
from controlnet_core.preprocess.nets import Architecture, NetCache, detect, find_weights, load_network, read_weights


class Small(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).relu())


SMALL = Architecture("small", Small, ("small_model.pth", "small_model.safetensors"), "example/Annotators")
WIDE = Architecture("wide", lambda: Small(8), ("wide_model.pth",), "example/Annotators")


def _random_state(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        out[k] = torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
    out["bn.running_var"] = out["bn.running_var"].abs() + 0.5
    return out


def test_wrapped_fp16_weights_without_batch_counters_load_exactly(tmp_path):
    sd = _random_state(Small(), 0)
    stored = {"state_dict": {"module." + k: v.half() for k, v in sd.items() if not k.endswith("num_batches_tracked")}}
    torch.save(stored, tmp_path / "small_model.pth")
    arch, net = load_network(tmp_path, [WIDE, SMALL])
    assert arch is SMALL
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert net.conv.weight.dtype == torch.float32
    assert torch.equal(net.conv.weight, sd["conv.weight"].half().float())
    x = torch.rand(1, 3, 8, 8)
    reference = Small().eval()
    reference.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in sd.items()})
    assert torch.equal(net(x), reference(x))


def test_detection_names_the_architecture_or_lists_the_expected_ones(tmp_path):
    assert detect(_random_state(Small(8), 1), [SMALL, WIDE], "f").name == "wide"
    other = {"conv.weight": torch.zeros(4, 3, 5, 5)}
    with pytest.raises(PreprocessError) as info:
        detect(other, [SMALL, WIDE], "other.pth")
    message = str(info.value)
    assert "other.pth" in message and "small_model.pth" in message and "wide_model.pth" in message
    assert "\n" not in message


def test_a_missing_file_names_the_file_the_folders_and_where_it_is_published(tmp_path):
    with pytest.raises(PreprocessError) as info:
        find_weights([tmp_path / "a", tmp_path / "b"], SMALL)
    message = str(info.value)
    assert "small_model.pth" in message and str(tmp_path / "a") in message and str(tmp_path / "b") in message
    assert "example/Annotators" in message


def test_models_dir_may_be_the_file_itself_and_safetensors_are_read(tmp_path):
    sd = _random_state(Small(), 2)
    path = tmp_path / "renamed.safetensors"
    save_file(sd, str(path))
    assert find_weights(path, SMALL) == path
    assert set(read_weights(path)) == set(sd)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "owned"),))

    import pickle

    (tmp_path / "small_model.pth").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(PreprocessError):
        load_network(tmp_path, [SMALL])
    assert not (tmp_path / "owned").exists()


def test_net_cache_reads_once_and_again_when_the_file_changes(tmp_path):
    path = tmp_path / "small_model.pth"
    torch.save(_random_state(Small(), 3), path)
    managed = []
    cache = NetCache(manage=lambda m: managed.append(m) or torch.device("cpu"))
    _, first, device = cache.get(tmp_path, [SMALL])
    _, again, _ = cache.get(tmp_path, [SMALL])
    assert first is again and cache.loads == 1 and device == torch.device("cpu") and managed == [first, first]
    torch.save(_random_state(Small(), 4), path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    _, changed, _ = cache.get(tmp_path, [SMALL])
    assert changed is not first and cache.loads == 2
    assert not torch.equal(changed.conv.weight, first.conv.weight)
