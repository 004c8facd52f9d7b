"""Checkpoint layouts: key maps against an independent oracle, format equivalence, strictness, safe reading."""
from __future__ import annotations

import os
import pickle
import random
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from controlnet_core.errors import CheckpointError
from controlnet_core.formats import (
    SD_BUFFERS,
    detect_format,
    from_ldm,
    load_controlnet,
    read_state_dict,
    to_ldm,
)
from tests.fixtures import SPECS, controlnet_ldm_shapes, random_controlnet_state_dict, to_diffusers_layout

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ helpers

def meta_state_dict(spec: str) -> dict[str, torch.Tensor]:
    """Real key names and shapes on the meta device: full-size specs cost no memory."""
    return {k: torch.empty(s, device="meta") for k, s in controlnet_ldm_shapes(SPECS[spec]).items()}


def prefixed_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """v1.0 full ControlLDM file: control_model.* plus locked-SD decoys and the 13 [1000] schedule buffers."""
    gen = torch.Generator().manual_seed(7)
    out = {"control_model." + k: v for k, v in sd.items()}
    out["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(8, 4, 3, 3, generator=gen)
    out["model.diffusion_model.out.2.bias"] = torch.randn(4, generator=gen)
    out["first_stage_model.encoder.conv_in.weight"] = torch.randn(8, 3, 3, 3, generator=gen)
    out["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.randn(8, generator=gen)
    out.update({name: torch.rand(1000, generator=gen) for name in SD_BUFFERS})
    return out


def residuals(net, spec: str, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """All residuals of `net` on fixed inputs (batch 2, 8x8 latent, 64x64 hint)."""
    s = SPECS[spec]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=gen).to(dtype)
    hint = torch.rand(2, 3, 64, 64, generator=gen).to(dtype)
    ctx = torch.randn(2, 7, s.context_dim, generator=gen).to(dtype)
    y = torch.randn(2, s.adm, generator=gen).to(dtype) if s.adm else None
    with torch.no_grad():
        out = net(x, hint, torch.tensor([999, 10]), ctx, y)
    return [*out["output"], *out["middle"]]


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for i, (p, q) in enumerate(zip(a, b)):
        assert p.dtype == q.dtype and torch.equal(p, q), f"residual {i}: max |diff| {(p - q).abs().max()}"


def write(obj, path: Path) -> Path:
    """safetensors for flat dicts named *.safetensors, torch.save for everything else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def tiny15() -> dict[str, torch.Tensor]:
    return random_controlnet_state_dict("tiny-sd15", seed=1)


@pytest.fixture(scope="module")
def reference15(tiny15) -> list[torch.Tensor]:
    """Residuals of the ldm dict loaded from memory: every layout and file kind must reproduce them bit for bit."""
    return residuals(load_controlnet(tiny15), "tiny-sd15")


# ------------------------------------------------------------------------------------------- key maps

@pytest.mark.parametrize("spec", list(SPECS))
def test_diffusers_key_map_agrees_with_independent_oracle(spec):
    sd = meta_state_dict(spec)
    oracle = to_diffusers_layout(sd, SPECS[spec].num_res_blocks)
    ours = from_ldm(sd, "diffusers")
    assert set(ours) == set(oracle)
    assert all(ours[k] is oracle[k] for k in oracle)  # same tensor under the same new name, nothing copied
    back = to_ldm(oracle)
    assert set(back) == set(sd) and all(back[k] is sd[k] for k in sd)
    assert detect_format(oracle) == "diffusers"


@pytest.mark.parametrize("spec", list(SPECS))
def test_prefixed_round_trip_and_decoys_dropped(spec):
    sd = meta_state_dict(spec)
    full = prefixed_layout(sd)
    assert detect_format(full) == "ldm-prefixed"
    back = to_ldm(full)
    assert set(back) == set(sd) and all(back[k] is sd[k] for k in sd)
    assert set(from_ldm(sd, "ldm-prefixed")) == {"control_model." + k for k in sd}


@pytest.mark.parametrize("layout", ["ldm", "ldm-prefixed", "diffusers"])
def test_converters_never_mutate_their_input(tiny15, layout):
    src = {"ldm": tiny15, "ldm-prefixed": prefixed_layout(tiny15),
           "diffusers": to_diffusers_layout(tiny15)}[layout]
    before = dict(src)
    snapshot = {k: v.clone() for k, v in src.items()}
    out = to_ldm(src)
    from_ldm(out, "diffusers")
    assert out is not src and list(src) == list(before) and all(src[k] is before[k] for k in src)
    assert all(torch.equal(src[k], snapshot[k]) for k in src)


@pytest.mark.parametrize("wrap", [lambda sd: {"state_dict": sd}, lambda sd: {"model": sd},
                                  lambda sd: {"state_dict": sd, "epoch": 3, "global_step": 10}])
def test_wrappers_are_unwrapped(tiny15, wrap):
    assert detect_format(wrap(prefixed_layout(tiny15))) == "ldm-prefixed"
    assert set(to_ldm(wrap(tiny15))) == set(tiny15)


# -------------------------------------------------------------------------------- format equivalence

LAYOUTS = {
    "ldm": lambda sd: sd,
    "ldm-prefixed": prefixed_layout,
    "diffusers": to_diffusers_layout,
}
FILES = [  # (layout, file name, wrapper)
    ("ldm", "cn.safetensors", None), ("ldm", "cn.pth", None), ("ldm", "cn.ckpt", "state_dict"),
    ("ldm-prefixed", "cn.safetensors", None), ("ldm-prefixed", "control_sd15.pth", None),
    ("ldm-prefixed", "cn.ckpt", "state_dict"), ("ldm-prefixed", "cn.pt", "one-key"),
    ("ldm-prefixed", "legacy.pth", "legacy"),  # torch's pre-1.6 (non-zip) serialisation
    ("diffusers", "diffusion_pytorch_model.safetensors", None), ("diffusers", "diffusion_pytorch_model.bin", None),
]


@pytest.mark.parametrize(("layout", "name", "wrapper"), FILES)
def test_every_layout_and_container_gives_identical_residuals(tmp_path, tiny15, reference15, layout, name, wrapper):
    sd = LAYOUTS[layout](tiny15)
    obj = {"state_dict": sd} if wrapper == "state_dict" else {"controlnet": sd} if wrapper == "one-key" else sd
    path = write(obj, tmp_path / name)
    if wrapper == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    net = load_controlnet(path)
    assert (net.source_format, net.storage_dtype, net.source) == (layout, torch.float32, str(path))
    assert_same(residuals(net, "tiny-sd15"), reference15)


def test_diffusers_folder_is_read(tmp_path, tiny15, reference15):
    write(to_diffusers_layout(tiny15), tmp_path / "cn" / "diffusion_pytorch_model.safetensors")
    assert_same(residuals(load_controlnet(tmp_path / "cn"), "tiny-sd15"), reference15)


def test_content_not_extension_decides_the_reader(tmp_path, tiny15):
    safetensors_named_pth = write(tiny15, tmp_path / "a.safetensors").rename(tmp_path / "a.pth")
    pickle_named_safetensors = write(tiny15, tmp_path / "b.pth").rename(tmp_path / "b.safetensors")
    for path in (safetensors_named_pth, pickle_named_safetensors):
        sd = read_state_dict(path)
        assert set(sd) == set(tiny15) and all(torch.equal(sd[k], tiny15[k]) for k in sd)


@pytest.mark.parametrize("spec", ["tiny-sd21", "tiny-sdxl"])
def test_layouts_agree_for_sd2_and_sdxl(tmp_path, spec):
    sd = random_controlnet_state_dict(spec, seed=2)
    reference = residuals(load_controlnet(sd), spec)
    for layout, make in LAYOUTS.items():
        path = write(make(sd), tmp_path / f"{layout}.safetensors")
        net = load_controlnet(path)
        assert net.source_format == layout and net.config.family == spec.removeprefix("tiny-").replace("21", "2")
        assert_same(residuals(net, spec), reference)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("layout", "name"), [("ldm", "cn.safetensors"), ("ldm-prefixed", "cn.pth"),
                                              ("diffusers", "diffusion_pytorch_model.bin")])
def test_half_precision_files_equal_the_fp32_file_cast(tmp_path, tiny15, dtype, layout, name):
    half = {k: v.to(dtype) for k, v in tiny15.items()}
    net = load_controlnet(write(LAYOUTS[layout](half), tmp_path / name))
    assert net.storage_dtype == dtype and net.dtype == dtype
    own = net.state_dict()
    assert all(torch.equal(own[k], half[k]) for k in half)  # the file's values, untouched
    fp32_cast = load_controlnet(write(tiny15, tmp_path / "fp32.safetensors")).to(dtype)
    assert_same(residuals(net, "tiny-sd15", dtype), residuals(fp32_cast, "tiny-sd15", dtype))
    upcast = load_controlnet(tmp_path / name, dtype=torch.float32)
    assert all(torch.equal(upcast.state_dict()[k], half[k].float()) for k in half)


def test_loaded_net_never_shares_or_mutates_the_callers_tensors(tiny15):
    before = {k: v.clone() for k, v in tiny15.items()}
    net = load_controlnet(tiny15)
    with torch.no_grad():
        net.zero_convs[0][0].weight.add_(1.0)
    assert all(torch.equal(tiny15[k], before[k]) for k in tiny15)
    assert not any(p.data_ptr() == t.data_ptr() for p in net.parameters() for t in tiny15.values())


def test_mixed_storage_reports_the_dominant_dtype(tiny15):
    mixed = {k: v.half() if v.ndim > 1 else v for k, v in tiny15.items()}
    net = load_controlnet(mixed)
    assert net.storage_dtype == torch.float16 and all(p.dtype == torch.float16 for p in net.parameters())


# --------------------------------------------------------------------------------------- strictness

def corrupt(sd, how):
    sd = dict(sd)
    if how == "missing":
        del sd["middle_block_out.0.bias"]
        return sd, "middle_block_out.0.bias"
    if how == "unexpected":
        sd["zero_convs.99.0.weight"] = torch.zeros(1)
        return sd, "zero_convs.99.0.weight"
    sd["zero_convs.3.0.bias"] = torch.zeros(sd["zero_convs.3.0.bias"].shape[0] + 1)
    return sd, "zero_convs.3.0.bias"


@pytest.mark.parametrize("how", ["missing", "unexpected", "wrong-shape"])
@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_strict_loading_names_the_key_and_the_file(tmp_path, tiny15, how, layout):
    sd, key = corrupt(tiny15, how)
    path = write(from_ldm(sd, layout), tmp_path / f"broken_{how}.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_controlnet(path)
    message = str(info.value)
    assert path.name in message and (key if layout == "ldm" else how.split("-")[0]) in message
    if layout == "ldm":
        assert {"missing": "1 missing", "unexpected": "1 unexpected", "wrong-shape": "1 wrong shape"}[how] in message


def test_unknown_keys_next_to_control_model_are_unexpected(tmp_path, tiny15):
    path = write({**prefixed_layout(tiny15), "ema_decay.weight": torch.ones(1)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"extra\.pth.*unexpected.*ema_decay\.weight"):
        load_controlnet(path)


def test_many_missing_keys_are_counted_not_listed(tiny15):
    partial = {k: v for k, v in tiny15.items() if not k.startswith("input_hint_block") or k.endswith(".0.weight")}
    with pytest.raises(CheckpointError, match=r"15 missing keys .*\(\+10 more\)"):
        load_controlnet(partial)


# ------------------------------------------------------------------------------------------ detection

FOREIGN = {  # kinds the core does not run: refused in one line naming the host node (more in test_formats_detect.py)
    "flux": ({"controlnet_blocks.0.weight": torch.zeros(1)}, "Flux"),
    "sd-checkpoint": ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, "Stable Diffusion"),
}


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_foreign_files_are_named_with_the_host_node_that_loads_them(kind):
    sd, what = FOREIGN[kind]
    with pytest.raises(CheckpointError) as info:
        detect_format(sd)
    assert what in str(info.value) and "load it with the host's" in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_layout_lists_what_we_read_and_what_we_do_not():
    with pytest.raises(CheckpointError) as info:
        detect_format({"encoder.weight": torch.zeros(1)})
    message = str(info.value)
    for word in ("unknown", "ldm", "ldm-prefixed", "diffusers", "T2I-Adapter", "Control-LoRA", "Flux"):
        assert word in message


def test_non_tensor_entries_are_refused():
    with pytest.raises(CheckpointError, match="not named tensors"):
        to_ldm({"zero_convs.0.0.weight": [1.0, 2.0]})


# ---------------------------------------------------------------------------------------------- safety

class RunsShell:
    """A pickle payload: unpickling runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class OpensFile:
    """A pickle payload: unpickling calls open(marker, "w"), creating it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("payload", [RunsShell, OpensFile])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_that_runs_code_is_refused_and_never_executed(tmp_path, payload, writer):
    live = tmp_path / "proof"
    pickle.loads(pickle.dumps(payload(live)))  # the payload is real: a plain unpickler runs it
    assert live.exists()
    marker = tmp_path / "pwned"
    obj = {"state_dict": {"zero_convs.0.0.weight": payload(marker)}}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj))
    with pytest.raises(CheckpointError, match=r"evil\.pth.*nothing in it was executed"):
        load_controlnet(path)
    assert not marker.exists()


@pytest.mark.parametrize("make", ["truncated", "garbage", "empty"])
def test_unreadable_files_raise_checkpoint_error_naming_the_file(tmp_path, tiny15, make):
    good = write(tiny15, tmp_path / "good.safetensors").read_bytes()
    path = tmp_path / f"{make}.safetensors"
    path.write_bytes({"truncated": good[: len(good) // 2], "garbage": random.Random(0).randbytes(4096),
                      "empty": b""}[make])
    with pytest.raises(CheckpointError, match=path.name):
        read_state_dict(path)


def test_random_and_damaged_bytes_only_ever_raise_checkpoint_error(tmp_path, tiny15):
    """The weights-only unpickler raises IndexError, struct.error, ... on garbage: all must become CheckpointError."""
    good = {"st": write(tiny15, tmp_path / "good.safetensors").read_bytes(),
            "pt": write(tiny15, tmp_path / "good.pth").read_bytes()}
    path = tmp_path / "damaged.bin"
    for seed in range(600):  # ~0.5 s; random bytes hit IndexError / struct.error about once in 15 files
        rng = random.Random(seed)
        if seed % 3 != 2:
            data = rng.randbytes(rng.choice([1, 9, 64, 2048]))
        else:
            data = bytearray(good["st" if seed % 2 else "pt"])
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(min(len(data), 400))] = rng.getrandbits(8)  # header / archive directory
            data = bytes(data[: rng.randrange(len(data) + 1)])
        path.write_bytes(data)
        try:
            read_state_dict(path)
        except CheckpointError as exc:
            assert "damaged.bin" in str(exc)


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="nope.safetensors: no such file"):
        load_controlnet(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors"):
        load_controlnet(tmp_path)


# ---------------------------------------------------------------------------------------------- memory

PEAK_SCRIPT = textwrap.dedent("""
    import sys, torch
    from controlnet_core.formats import load_controlnet
    import controlnet_core.controlnet, safetensors.torch

    def rss():  # VmHWM: this process's peak resident set (ru_maxrss would include the parent's, kept over exec)
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return int(status["VmHWM"].split()[0]) * 1024

    base = rss()
    net = load_controlnet(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
    loaded = rss()
    total = sum(float(p.detach().float().sum()) for p in net.parameters())  # touch every weight: mapped pages count now
    used = rss()
    held = sum(p.numel() * p.element_size() for p in net.parameters())
    print(base, loaded, used, held, net.storage_dtype, net.config.family, total == total)
""")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_full_size_sd15_fp16_load_peak_memory(tmp_path_factory, dtype):
    """Peak RSS of loading a full-size SD1.5 fp16 file stays near the final weights' size (no double peak)."""
    path = tmp_path_factory.getbasetemp() / "sd15_fp16.safetensors"
    if not path.exists():
        write(random_controlnet_state_dict("sd15", seed=0, dtype=torch.float16), path)
    size = path.stat().st_size
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path), dtype], cwd=REPO, capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    base, loaded, used, held, stored, family, finite = out.stdout.split()
    base, loaded, used, held = int(base), int(loaded), int(used), int(held)
    mib = 2 ** 20
    print(f"\n{dtype} load of a {size / mib:.0f} MiB fp16 file: weights {held / mib:.0f} MiB; peak RSS over imports "
          f"{(loaded - base) / mib:.0f} MiB after load, {(used - base) / mib:.0f} MiB after touching every weight")
    assert (stored, family, finite) == ("torch.float16", "sd1", "True")
    assert held == 361_279_120 * getattr(torch, dtype).itemsize
    # Same dtype: one copy (the parameters are the file's pages); a load-then-copy would be 2x.
    # fp16 -> fp32: the fp32 weights + the memory-mapped fp16 file (shared page cache) while casting, not 2 x fp32.
    assert used - base < held + (size if dtype == "float32" else 0) + 150 * mib
