"""The host's model management holding our ControlNet, in process (the host imported as a library).

Run by pytest with the core interpreter: each check starts the host's interpreter on this file (`__main__` below),
which imports the host and the pack, loads a ControlNet through `nodes/host/models.py` and prints one JSON line.
- low-VRAM partial load: a budget of half the model's size keeps at most that much resident, the rest offloaded
  layer by layer (the host's cast-on-read layers), and the residuals equal those of a full load;
- fp8 files stay fp8 in memory (the stored dtype, not a log line), computed in fp32 through the host's
  cast-on-read layers, and a dropped fp8 net is freed at once (no reference cycle waiting for the collector);
- a Control-LoRA merged at pre_run is listed by get_models and offloaded by the host's model management.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)
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
    assert result["effect"] > 0
    assert result["freed_without_collector"]  # torch's parametrize left a cycle here: the host warned of a leak


def test_merged_control_lora_is_listed_and_offloaded_by_model_management(comfyui, model_files):
    """The Control-LoRA merged at pre_run (on the random SD1.5 checkpoint's U-Net) is the control's get_models()
    patcher and one of the host's loaded models; the host's own offload call (LoadedModel.model_unload with a
    budget, as free_memory does) takes its resident weights down to the budget (on a GPU: back to the offload
    device), the residuals stay the same, and a later load brings it back whole. Merged once for two runs."""
    from tests.host.assets import CHECKPOINT
    from tests.host.server import comfyui_python
    from tests.host.test_union_lora import CONTROL_LORA

    r = _run_host(comfyui, comfyui_python(comfyui), "control_lora", str(model_files[CHECKPOINT]),
                  str(model_files[CONTROL_LORA]))
    log.info("merged Control-LoRA under the host's model management: %s", r)
    assert r["listed_before_pre_run"] is False  # nothing is merged before the first pre_run
    assert r["in_get_models"] and r["in_loaded_models"], r
    assert r["same_patcher_next_run"], "a second run re-merged the Control-LoRA"
    assert r["loaded"] == r["size"] > 0
    assert r["offloaded_layers"] > 0 and r["resident_after_unload"] <= r["size"] - r["size"] // 2, r
    assert r["offloaded_on_offload_device"], r
    assert r["max_abs_diff"] == 0.0 and r["effect"] > 0
    assert r["resident_after_reload"] == r["size"]


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
    import gc
    import weakref

    import torch

    net = models.core_load_controlnet(path, device="cpu")
    patcher = models.hold(net, net.storage_dtype, net.config.family)
    stored = {str(m.weight.dtype) for m in patcher.model.modules()
              if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    residuals = _residuals(patcher.model, torch)  # runs: the fp8 kernels are cast to fp32 as they are read
    result = {"matrix_dtypes": sorted(stored), "compute_dtype": str(patcher.model.dtype),
              "effect": float(residuals.abs().max())}
    alive = weakref.ref(patcher.model)
    gc.disable()
    del net, patcher, residuals
    result["freed_without_collector"] = alive() is None
    gc.enable()
    return result


def _control_lora(models, checkpoint: str, path: str) -> dict:
    import torch
    from safetensors import safe_open

    import comfy.model_management as mm
    import comfy.sd

    adapter = sys.modules[f"{PACK}.nodes.host.adapter"]
    core = importlib.import_module(f"{PACK}.controlnet_core.control_lora")
    prefix = "model.diffusion_model."
    with safe_open(checkpoint, framework="pt", device="cpu") as f:  # the U-Net only, not CLIP and VAE
        unet = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118
    model = comfy.sd.load_diffusion_model_state_dict(unet)  # the host's ModelPatcher of an SD1.5 U-Net
    del unet
    mm.load_models_gpu([model])
    template = adapter.BaseMergedControlNet(models.BaseMerge(core.load_base_delta(path)))
    first = template.copy()
    listed_before = bool(first.get_models())
    first.pre_run(model.model, model.model.model_sampling.percent_to_sigma)  # merges, the host loads it
    patcher = first.patcher
    second = template.copy()
    second.pre_run(model.model, model.model.model_sampling.percent_to_sigma)  # the next sampling run
    loaded = next((m for m in mm.current_loaded_models if m.model is patcher), None)
    size, resident = patcher.model_size(), patcher.loaded_size()
    full = _residuals(patcher.model, torch)
    loaded.model_unload(memory_to_free=size // 2)  # the host's offload call under a memory budget
    offloaded = [m for m in patcher.model.modules() if getattr(m, "comfy_cast_weights", False)]
    after = patcher.loaded_size()
    partial = _residuals(patcher.model, torch)
    mm.load_models_gpu([patcher])
    return {"listed_before_pre_run": listed_before, "in_get_models": any(m is patcher for m in first.get_models()),
            "in_loaded_models": loaded is not None, "same_patcher_next_run": second.patcher is patcher,
            "size": size, "loaded": resident, "offloaded_layers": len(offloaded), "resident_after_unload": after,
            "offloaded_on_offload_device": all(p.device == torch.device(patcher.offload_device)
                                               for m in offloaded for p in m.parameters(recurse=False)),
            "max_abs_diff": float((partial - full).abs().max()), "effect": float(full.abs().max()),
            "resident_after_reload": patcher.loaded_size()}


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
    _result = {"partial": _partial, "fp8": _fp8, "mapping": _mapping,
               "control_lora": _control_lora}[sys.argv[2]](_models, *sys.argv[3:])
    print(json.dumps(_result))
