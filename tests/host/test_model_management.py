"""The host's model management holding our ControlNet, in process (the host imported as a library).

Run by pytest with the core interpreter: each check starts the host's interpreter on this file (`__main__` below),
which imports the host and the pack, loads a ControlNet through `nodes/host/models.py` and prints one JSON line.
- low-VRAM partial load: a budget of half the model's size keeps at most that much resident, the rest offloaded
  layer by layer (the host's cast-on-read layers), and the residuals equal those of a full load;
- fp8 files stay fp8 in memory (the stored dtype, not a log line).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK = "comfyui_controlnet_core_inprocess"


def _run_host(comfyui: Path, python: str, *args: str) -> dict:
    out = subprocess.run([python, __file__, str(comfyui), *args], capture_output=True, text=True, timeout=900,
                         cwd=str(comfyui))
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_half_budget_partial_load_is_within_budget_and_unchanged(comfyui, model_files):
    from tests.host.graphs import CANNY
    from tests.host.server import comfyui_python

    result = _run_host(comfyui, comfyui_python(comfyui), "partial", str(model_files[CANNY]))
    assert result["host_layers"] > 100  # every conv/linear/norm became the host's cast-on-read class
    assert result["lowvram"] and result["offloaded_layers"] > 0
    assert 0 < result["resident"] <= result["budget"] == result["size"] // 2
    assert result["max_abs_diff"] == 0.0 and result["effect"] > 0


def test_fp8_file_is_stored_fp8(comfyui, model_files):
    from tests.host.graphs import FP8
    from tests.host.server import comfyui_python

    result = _run_host(comfyui, comfyui_python(comfyui), "fp8", str(model_files[FP8]))
    assert result["matrix_dtypes"] == ["torch.float8_e4m3fn"]  # every kernel and matrix stays narrow
    assert result["compute_dtype"] == "torch.float32"  # read in the compute dtype, layer by layer


def test_sigma_to_percent_mapping_inverts_the_hosts_percent_to_sigma(comfyui):
    """The adapter's sigma -> percent table against the host's own SD1.5 sigmas (ModelSamplingDiscrete)."""
    from tests.host.server import comfyui_python

    result = _run_host(comfyui, comfyui_python(comfyui), "mapping", "-")
    assert result["falls"]  # sigma falls as percent rises (the table's assumption)
    assert result["max_percent_error"] < 1e-3, result


# ------------------------------------------------------------------------------ the host's side (host python)

def _import_host_and_pack(comfyui: str):
    sys.path.insert(0, comfyui)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    spec = importlib.util.spec_from_file_location(PACK, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{PACK}.nodes.host.models")


def _residuals(net, torch):
    """Every residual of one forward on fixed inputs, flattened: (N,)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    hint = torch.rand(1, 3, 64, 64, generator=g)
    context = torch.randn(1, 77, 768, generator=g)
    with torch.no_grad():
        out = net(x, hint, torch.tensor([500.0]), context)
    tensors = [*out["output"], *out["middle"]]
    return torch.cat([t.flatten().float() for t in tensors])


def _partial(models, path: str) -> dict:
    import torch

    import comfy.model_management

    net = models.core_load_controlnet(path, device="cpu")
    patcher = models.hold(net, net.storage_dtype, net.config.family)
    host_layers = sum(hasattr(m, "comfy_cast_weights") for m in patcher.model.modules())
    full = _residuals(patcher.model, torch)
    size = patcher.model_size()
    budget = size // 2
    patcher.unpatch_model(device_to=patcher.offload_device)
    patcher.load(comfy.model_management.get_torch_device(), lowvram_model_memory=budget)
    resident = patcher.loaded_size()
    offloaded = sum(bool(getattr(m, "comfy_cast_weights", False)) for m in patcher.model.modules())
    partial = _residuals(patcher.model, torch)
    return {"host_layers": host_layers, "size": size, "budget": budget, "resident": resident,
            "lowvram": bool(getattr(patcher.model, "model_lowvram", False)), "offloaded_layers": offloaded,
            "max_abs_diff": float((partial - full).abs().max()), "effect": float(full.abs().max())}


def _fp8(models, path: str) -> dict:
    import torch

    net = models.core_load_controlnet(path, device="cpu")
    patcher = models.hold(net, net.storage_dtype, net.config.family)
    stored = set()
    for module in patcher.model.modules():
        originals = getattr(getattr(module, "parametrizations", None), "weight", None)
        weight = originals.original if originals is not None else module._parameters.get("weight")
        if weight is not None and weight.ndim >= 2:
            stored.add(str(weight.dtype))
    return {"matrix_dtypes": sorted(stored), "compute_dtype": str(patcher.model.dtype)}


def _mapping(models, _: str) -> dict:
    import comfy.model_sampling

    adapter = sys.modules[f"{PACK}.nodes.host.adapter"]
    sampling = comfy.model_sampling.ModelSamplingDiscrete()  # SD1.5's scaled-linear betas, 1000 steps
    table = adapter.PercentTable.build(sampling.percent_to_sigma)
    percents = [(i + 0.37) / 40 for i in range(39)]  # off the table's grid
    sigmas = [float(sampling.percent_to_sigma(p)) for p in percents]
    errors = [abs(table.percent(s) - p) for p, s in zip(percents, sigmas)]
    return {"falls": all(a > b for a, b in zip(sigmas, sigmas[1:])), "max_percent_error": max(errors)}


if __name__ == "__main__":
    _models = _import_host_and_pack(sys.argv[1])
    _result = {"partial": _partial, "fp8": _fp8, "mapping": _mapping}[sys.argv[2]](_models, sys.argv[3])
    print(json.dumps(_result))
