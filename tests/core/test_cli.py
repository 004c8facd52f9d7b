"""`python -m controlnet_core`: inspect, convert, bad files (one stderr line, exit 1), preprocess delegation."""
from __future__ import annotations

import json
import math
import os
import random
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from controlnet_core.__main__ import main
from controlnet_core.formats import detect_format
from tests.fixtures import (
    SPECS,
    Spec,
    controlnet_ldm_shapes,
    diffusers_controlnet_config,
    random_controlnet_state_dict,
    to_diffusers_layout,
)

REPO = Path(__file__).resolve().parents[2]
FAMILY = {"tiny-sd15": "sd1", "tiny-sd21": "sd2", "tiny-sdxl": "sdxl"}
DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def expected(spec: str) -> dict:
    """What inspect must report, computed from the fixture's key/shape table (not from our code)."""
    shapes = controlnet_ldm_shapes(SPECS[spec])
    zero = sorted((int(k.split(".")[1]), s[0]) for k, s in shapes.items() if k.startswith("zero_convs.")
                  and k.endswith(".bias"))
    channels = [c for _, c in zero] + [shapes["middle_block_out.0.bias"][0]]
    return {"family": FAMILY[spec], "variant": "full", "parameters": sum(math.prod(s) for s in shapes.values()),
            "residuals": len(channels), "residual_channels": channels, "context_dim": SPECS[spec].context_dim,
            "hint_channels": 3, "kind": "controlnet"}


def write_layout(sd: dict, layout: str, directory: Path) -> Path:
    """The same weights as an ldm .safetensors, a prefixed .pth or a diffusers folder."""
    directory.mkdir(parents=True, exist_ok=True)
    if layout == "ldm":
        path = directory / "cn.safetensors"
        save_file(sd, str(path))
    elif layout == "ldm-prefixed":
        path = directory / "cn.pth"
        torch.save({"state_dict": {"control_model." + k: v for k, v in sd.items()}}, path)
    else:
        path = directory / "cn_diffusers"
        path.mkdir()
        save_file(to_diffusers_layout(sd), str(path / "diffusion_pytorch_model.safetensors"))
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, name: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert name in lines[0] and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ inspect

@pytest.mark.parametrize(("spec", "layout", "dtype"), [
    ("tiny-sd15", "ldm", "fp16"), ("tiny-sd15", "ldm-prefixed", "fp32"), ("tiny-sd15", "diffusers", "bf16"),
    ("tiny-sd21", "ldm", "fp32"), ("tiny-sd21", "diffusers", "fp16"),
    ("tiny-sdxl", "ldm-prefixed", "bf16"), ("tiny-sdxl", "diffusers", "fp32"),
])
def test_inspect_json_and_text(tmp_path, capsys, spec, layout, dtype):
    sd = random_controlnet_state_dict(spec, seed=0, dtype=DTYPE[dtype])
    path = write_layout(sd, layout, tmp_path)
    code, out, err = run_cli(capsys, "inspect", str(path), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info == {**expected(spec), "path": str(path), "format": layout, "dtype": dtype}

    code, out, err = run_cli(capsys, "inspect", str(path))
    assert code == 0, err
    fields = dict(line.split(None, 1) for line in out.strip().splitlines())
    want = expected(spec)
    assert (fields["family"], fields["format"], fields["variant"], fields["dtype"]) == (
        want["family"], layout, "full", dtype)
    assert fields["parameters"] == f"{want['parameters']:,}"
    assert fields["residuals"] == f"{want['residuals']}: " + " ".join(map(str, want["residual_channels"]))


# ------------------------------------------------------------------------------------------------ convert

@pytest.mark.parametrize("spec", list(FAMILY))
def test_convert_ldm_to_diffusers_to_ldm_round_trip(tmp_path, capsys, spec):
    sd = random_controlnet_state_dict(spec, seed=4)
    src = write_layout(sd, "ldm", tmp_path)
    folder, back = tmp_path / "diffusers_out", tmp_path / "back.safetensors"
    assert run_cli(capsys, "convert", str(src), str(folder), "--to", "diffusers")[0] == 0
    written = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    assert set(written) == set(to_diffusers_layout(sd, SPECS[spec].num_res_blocks))
    assert run_cli(capsys, "convert", str(folder), str(back), "--to", "ldm")[0] == 0
    result = load_file(str(back))
    assert set(result) == set(sd) and all(torch.equal(result[k], sd[k]) for k in sd)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_convert_casts_and_drops_the_locked_sd(tmp_path, capsys, dtype):
    sd = random_controlnet_state_dict("tiny-sd15", seed=5)
    full = {**{"control_model." + k: v for k, v in sd.items()}, "betas": torch.rand(1000),
            "model.diffusion_model.out.2.weight": torch.rand(4, 32, 3, 3)}
    src, out = tmp_path / "control_sd15_full.pth", tmp_path / "small.safetensors"
    torch.save(full, src)
    code, stdout, err = run_cli(capsys, "convert", str(src), str(out), "--to", "ldm", "--dtype", dtype)
    assert code == 0 and str(out) in stdout, err
    result = load_file(str(out))
    assert detect_format(result) == "ldm" and set(result) == set(sd)
    assert all(torch.equal(result[k], sd[k].to(DTYPE[dtype])) for k in sd)


@pytest.fixture(scope="module")
def diffusers_controlnet():
    import diffusers  # a test dependency: missing it fails, never skips

    return diffusers.ControlNetModel


@pytest.mark.parametrize("spec", list(FAMILY))
def test_written_config_json_builds_the_diffusers_model(tmp_path, capsys, diffusers_controlnet, spec):
    """config.json + weights load into diffusers' own ControlNetModel strictly (an implementation we did not write)."""
    sd = random_controlnet_state_dict(spec, seed=6)
    folder = tmp_path / "out"
    assert run_cli(capsys, "convert", str(write_layout(sd, "ldm", tmp_path)), str(folder), "--to", "diffusers")[0] == 0
    config = json.loads((folder / "config.json").read_text())
    oracle = diffusers_controlnet_config(spec)
    assert {k: config[k] for k in oracle} == {k: (list(v) if isinstance(v, tuple) else v) for k, v in oracle.items()}
    model = diffusers_controlnet.from_config(config)
    model.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")), strict=True)


SDXL_VARIANTS = {  # the host's SDXL_mid_cnet / SDXL_small_cnet depth tables, at width 64
    "mid": Spec(model_channels=64, channel_mult=(1, 2, 2), depth=(0, 0, 1), mid_depth=1, context_dim=2048,
                linear=True, adm=2816),
    "small": Spec(model_channels=64, channel_mult=(1, 2, 2), depth=(0, 0, 0), mid_depth=0, context_dim=2048,
                  linear=True, adm=2816),
}


@pytest.mark.parametrize("variant", list(SDXL_VARIANTS))
def test_sdxl_mid_and_small_variants(tmp_path, capsys, diffusers_controlnet, variant):
    spec = SDXL_VARIANTS[variant]
    sd = random_controlnet_state_dict(spec, seed=8, dtype=torch.float16)
    src = write_layout(sd, "ldm", tmp_path)
    code, out, err = run_cli(capsys, "inspect", str(src), "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["family"], info["variant"], info["residuals"]) == ("sdxl", variant, 10)
    folder = tmp_path / "out"
    assert run_cli(capsys, "convert", str(src), str(folder), "--to", "diffusers")[0] == 0
    model = diffusers_controlnet.from_config(json.loads((folder / "config.json").read_text()))
    model.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")), strict=True)


def test_unwritable_output_is_one_line(tmp_path, capsys):
    src = write_layout(random_controlnet_state_dict("tiny-sd15"), "ldm", tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "convert", str(src), str(blocker / "out"), "--to", "diffusers")
    assert_one_line_error(code, err, "a_file")


def test_convert_refuses_a_non_safetensors_ldm_output(tmp_path, capsys):
    src = write_layout(random_controlnet_state_dict("tiny-sd15"), "ldm", tmp_path)
    code, _, err = run_cli(capsys, "convert", str(src), str(tmp_path / "out.pth"), "--to", "ldm")
    assert_one_line_error(code, err, "out.pth")


# ------------------------------------------------------------------------------------------- bad files

class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def bad_file(tmp_path: Path, kind: str) -> Path:
    good = tmp_path / "good.safetensors"
    save_file(random_controlnet_state_dict("tiny-sd15"), str(good))
    path = tmp_path / f"{kind}.safetensors"
    if kind == "truncated":
        path.write_bytes(good.read_bytes()[:5000])
    elif kind == "garbage":
        path.write_bytes(random.Random(0).randbytes(2048))
    elif kind == "unknown-layout":
        save_file({"encoder.conv.weight": torch.zeros(2, 2)}, str(path))
    elif kind == "t2i-adapter":
        save_file({"conv_in.weight": torch.zeros(2, 2), "body.0.block1.weight": torch.zeros(2, 2)}, str(path))
    elif kind == "pickle":
        path = tmp_path / "evil.pth"
        torch.save({"state_dict": {"zero_convs.0.0.weight": RunsShell(tmp_path / "pwned")}}, path)
    elif kind == "missing":
        path = tmp_path / "does_not_exist.safetensors"
    elif kind == "wrong-shape":
        sd = random_controlnet_state_dict("tiny-sd15")
        sd["zero_convs.1.0.weight"] = torch.zeros(3, 3, 1, 1)
        save_file(sd, str(path))
    return path


KINDS = ["truncated", "garbage", "unknown-layout", "t2i-adapter", "pickle", "missing", "wrong-shape"]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_file_gives_one_line_and_exit_1(tmp_path, capsys, kind):
    path = bad_file(tmp_path, kind)
    for argv in (["inspect", str(path)], ["convert", str(path), str(tmp_path / "o.safetensors"), "--to", "ldm"]):
        code, out, err = run_cli(capsys, *argv)
        assert_one_line_error(code, err, path.name)
        assert out == ""
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("kind", ["pickle", "truncated", "missing"])
def test_bad_file_through_the_real_entry_point(tmp_path, kind):
    path = bad_file(tmp_path, kind)
    proc = subprocess.run([sys.executable, "-m", "controlnet_core", "inspect", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, path.name)
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------------ preprocess delegation

def test_inspect_does_not_import_preprocess(tmp_path):
    path = write_layout(random_controlnet_state_dict("tiny-sd15"), "ldm", tmp_path)
    code = ("import sys; from controlnet_core.__main__ import main; rc = main(['inspect', sys.argv[1]]); "
            "print(rc, 'controlnet_core.preprocess.cli' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "0 False", proc.stderr


def test_broken_preprocess_module_breaks_only_preprocess(tmp_path, capsys, monkeypatch):
    import controlnet_core.preprocess as package

    monkeypatch.delattr(package, "cli", raising=False)
    monkeypatch.setitem(sys.modules, "controlnet_core.preprocess.cli", None)  # import now raises ImportError
    path = write_layout(random_controlnet_state_dict("tiny-sd15"), "ldm", tmp_path)
    assert run_cli(capsys, "inspect", str(path))[0] == 0
    code, _, err = run_cli(capsys, "preprocess", "canny", "in.png", "out.png")
    assert_one_line_error(code, err, "preprocess")


def test_preprocess_is_delegated(tmp_path, capsys):
    from PIL import Image, ImageDraw

    src, out = tmp_path / "in.png", tmp_path / "out.png"
    picture = Image.new("RGB", (64, 48), "black")
    ImageDraw.Draw(picture).rectangle((16, 12, 48, 36), fill="white")
    picture.save(src)
    code, _, err = run_cli(capsys, "preprocess", "canny", str(src), str(out), "--low_threshold", "100",
                           "--high_threshold", "200")
    assert code == 0, err
    with Image.open(out) as hint:
        assert hint.size == (64, 48) and 0 < sum(hint.convert("L").histogram()[128:]) < 64 * 48 / 2
    code, _, err = run_cli(capsys, "preprocess", "canny", str(tmp_path / "nope.png"), str(out))
    assert_one_line_error(code, err, "nope.png")
