"""Host side of `make bench`, run by benchmarks/run.py with the HOST's python (it imports comfy):

    $COMFYUI_PYTHON benchmarks/host_bench.py --comfyui COMFYUI_PATH [--repeats 3] [--json OUT]
    $COMFYUI_PYTHON benchmarks/host_bench.py --comfyui COMFYUI_PATH --peak CONFIG

The host's own code paths, same settings as the standalone part: an SD1.5 U-Net from a random fp16 state dict through
`comfy.sd.load_diffusion_model_state_dict`, random fp16 ControlNet files loaded by the host
(`comfy.controlnet.load_controlnet`, applied with the host's `ControlNetApplyAdvanced`) and by our nodes
(`LoadControlNet` / `ApplyControlNet` `execute`), sampled with `comfy.sample.sample` (euler, normal, 4 steps,
CFG 7, 256x256). Timing: one process holding both sides, runs in `benchmarks.timing.schedule` order, one JSON
record per run (run.py turns them into ratios). `--peak`: one configuration in a fresh process, the peak resident
set of its first sampling run, absolute and above the loaded state.
Control-LoRA rows (`*-control-lora`): a random rank-128 SD1.5 Control-LoRA, loaded by the host's loader
(`ControlLora`: rebuilt at every run's pre_run, `W + up @ down` in every forward) and by ours (merged once into the
sampled U-Net at its first sampling, which the warm-up does). `--configs` times a subset (always with the U-Net).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / ".bench" / "host_models"
PACK = "controlnet_core_pack"  # the name our package gets here (the host uses the path; anything unique works)
LATENT, STEPS, CFG = 32, 4, 7.0
CONFIGS = {  # name -> (side, number of controls, cond-only)
    "unet": ("none", 0, False),
    "native-k1": ("native", 1, False), "native-k2": ("native", 2, False), "native-k3": ("native", 3, False),
    "ours-k1": ("ours", 1, False), "ours-k2": ("ours", 2, False), "ours-k3": ("ours", 3, False),
    "ours-k1-cond-only": ("ours", 1, True),
    "native-control-lora": ("native", 1, False), "ours-control-lora": ("ours", 1, False),
}
CONTROL_LORA_RANK = 128  # Stability's SD1.5 Control-LoRAs (the host re-merges W + up @ down in every forward)
CONTROL_LORA_FILE = f"bench_control_lora_sd15_rank{CONTROL_LORA_RANK}.safetensors"
KIND_FILES = {"native-control-lora": CONTROL_LORA_FILE, "ours-control-lora": CONTROL_LORA_FILE}  # config -> file


def setup_host(comfyui: Path) -> None:
    """Import the host as a library: its root first on sys.path (its `nodes` module), ours last."""
    sys.path.insert(0, str(comfyui))
    sys.path.append(str(ROOT))
    import comfy.cli_args
    import torch

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True


def unet_state_dict():
    """Random fp16 SD1.5 U-Net, keys from the host's own UNetModel built on the meta device."""
    import torch

    import comfy.ops
    from benchmarks.sampling import random_state_dict
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=2,
                         channel_mult=(1, 2, 4, 4), num_heads=8, use_spatial_transformer=True,
                         transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                         transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], context_dim=768,
                         legacy=False, use_linear_in_transformer=False, device="meta",
                         operations=comfy.ops.disable_weight_init)
    return random_state_dict(unet, seed=100)


def controlnet_files(n: int) -> list[str]:
    """n random fp16 ldm ControlNet files (SD1.5) in .bench/host_models/controlnet, written once."""
    import torch
    from safetensors.torch import save_file

    from benchmarks.sampling import random_weights
    from controlnet_core.controlnet import ControlNet, ControlNetConfig

    folder = MODELS / "controlnet"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(1, n + 1):
        path = folder / f"bench_sd15_{i}.safetensors"
        if not path.exists():
            with torch.device("meta"):
                shapes = {k: tuple(v.shape) for k, v in ControlNet(ControlNetConfig()).state_dict().items()}
            save_file(random_weights(shapes, seed=i), str(path.with_suffix(".partial")))
            path.with_suffix(".partial").replace(path)
        names.append(path.name)
    return names


def our_module(name: str):
    """One of our modules under a top-level name the host's root also has (`tests`; the host's root is first on
    sys.path): imported with our root first. Ours then stay in sys.modules under that name, so the module's own
    later imports (inside functions) find ours too; the bench never imports the host's package of that name."""
    top = name.split(".")[0]
    for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
        if not str(getattr(sys.modules[key], "__file__", "") or "").startswith(str(ROOT)):
            del sys.modules[key]
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT))  # the first occurrence: the one just inserted


def control_lora_file() -> str:
    """A random fp16 SD1.5 Control-LoRA (Stability layout, rank CONTROL_LORA_RANK) in .bench/host_models/controlnet,
    written once (tests/host/union_lora_files.py, the host tests' maker)."""
    from safetensors.torch import save_file

    control_lora_sd15 = our_module("tests.host.union_lora_files").control_lora_sd15

    path = MODELS / "controlnet" / CONTROL_LORA_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        sd = {k: v.half() if v.is_floating_point() and v.ndim else v
              for k, v in control_lora_sd15(41, CONTROL_LORA_RANK).items()}
        save_file(sd, str(path.with_suffix(".partial")))
        path.with_suffix(".partial").replace(path)
    return path.name


def load_pack():
    """Our package imported the way the host's custom-node loader does (a package at the repo root)."""
    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return (importlib.import_module(f"{PACK}.nodes.load").LoadControlNet,
            importlib.import_module(f"{PACK}.nodes.apply").ApplyControlNet,
            importlib.import_module(f"{PACK}.controlnet_core.weights").ControlWeights)


class Bench:
    """Everything a configuration needs: the host model, both kinds of ControlNets, conditioning, hints."""

    def __init__(self, n_nets: int):
        import torch

        import comfy.controlnet
        import comfy.sd
        import folder_paths

        folder_paths.add_model_folder_path("controlnet", str(MODELS / "controlnet"), is_default=True)
        names = controlnet_files(max(n_nets, 1))
        control_lora_file()
        self.model = comfy.sd.load_diffusion_model_state_dict(unet_state_dict())
        gen = torch.Generator().manual_seed(0)
        self.positive = [[torch.randn(1, 77, 768, generator=gen), {}]]
        self.negative = [[torch.randn(1, 77, 768, generator=gen), {}]]
        self.hints = [torch.rand(1, 8 * LATENT, 8 * LATENT, 3, generator=gen) for _ in range(3)]
        self.latent = torch.zeros(1, 4, LATENT, LATENT)
        self.paths = [folder_paths.get_full_path_or_raise("controlnet", name) for name in names]
        self.names = names
        self.native, self.ours = {}, {}
        self.LoadControlNet, self.ApplyControlNet, self.ControlWeights = load_pack()
        self._load = {"native": comfy.controlnet.load_controlnet}

    def net(self, side: str, i: int):
        """The i-th ControlNet of a side, loaded once."""
        cache = self.native if side == "native" else self.ours
        if i not in cache:
            if side == "native":
                cache[i] = self._load["native"](self.paths[i])
            else:
                cache[i] = self.LoadControlNet.execute(self.names[i]).result[0]
        return cache[i]

    def kind_net(self, side: str, name: str):
        """A side's network of a kind-specific file (KIND_FILES), loaded once by that side's loader node/function."""
        import folder_paths

        cache = self.native if side == "native" else self.ours
        if name not in cache:
            if side == "native":
                cache[name] = self._load["native"](folder_paths.get_full_path_or_raise("controlnet", name))
            else:
                cache[name] = self.LoadControlNet.execute(name).result[0]
        return cache[name]

    def conditioning(self, config: str):
        """(positive, negative) with the configuration's controls applied, chained as the apply nodes do."""
        import nodes as host_nodes

        side, k, cond_only = CONFIGS[config]
        pos, neg = self.positive, self.negative
        file = KIND_FILES.get(config)
        for i in range(k):
            net = self.kind_net(side, file) if file else self.net(side, i)
            if side == "native":
                pos, neg = host_nodes.ControlNetApplyAdvanced().apply_controlnet(
                    pos, neg, net, self.hints[i], 1.0, 0.0, 1.0)
            else:
                strength = self.ControlWeights(mode="controlnet") if cond_only else None
                pos, neg = self.ApplyControlNet.execute(pos, neg, net, self.hints[i], 1.0, 0.0, 1.0,
                                                        control_strength=strength).result
        return pos, neg

    def sample(self, config: str):
        """One sampling run of a configuration (conditioning built fresh, as a queue run with a changed input)."""
        import torch

        import comfy.sample

        pos, neg = self.conditioning(config)
        noise = comfy.sample.prepare_noise(self.latent, 0)
        with torch.inference_mode():
            return comfy.sample.sample(self.model, noise, STEPS, CFG, "euler", "normal", pos, neg, self.latent,
                                       denoise=1.0, disable_pbar=True, seed=0)


def rss_mb(field: str = "VmRSS") -> float:
    """Resident set (VmRSS) or its peak since the last reset (VmHWM), MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def peak_child(config: str) -> dict:
    """One configuration in this fresh process: models and nets loaded first, then the peak of the first sampling
    run, absolute and above the resident set just before it (activations, hints, residual sets, caches)."""
    import gc

    import torch

    bench = Bench(CONFIGS[config][1])
    bench.conditioning(config)  # loads the nets outside the measured window
    if config in KIND_FILES:
        bench.sample(config)  # ours merges a Control-LoRA once per base state: measure a run after that
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2 ** 20
    else:
        Path("/proc/self/clear_refs").write_text("5")
        base = rss_mb()
    bench.sample(config)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else rss_mb("VmHWM")
    return {"config": config, "peak_mb": peak, "delta_mb": peak - base}


def time_runs(bench: Bench, repeats: int, configs: list[str] | None = None) -> list[dict]:
    """Every configuration of both sides in one process, in `timing.schedule` order (each run between two
    U-Net-only runs); one record per run: config, wall seconds, process CPU seconds. Both sides' nets stay loaded
    (U-Net + 6 nets is ~12 GB in fp32), so native and ours are measured in the same state."""
    from benchmarks.timing import schedule

    configs = ["unet", *(c for c in configs or CONFIGS if c != "unet")]
    for config in configs:  # warm-up, not recorded: loads every net, allocator and kernel choice
        bench.conditioning(config)
    bench.sample("ours-k1")
    for config in KIND_FILES:  # a Control-LoRA is merged (ours) at its first sampling: once per base state
        if config in configs:
            bench.sample(config)
    records = []
    for config in schedule(configs, repeats):
        bench.conditioning(config)  # built before the clock starts, as a queue run with a changed input
        t0, c0 = time.perf_counter(), time.process_time()
        bench.sample(config)
        records.append({"config": config, "seconds": time.perf_counter() - t0,
                        "cpu_seconds": time.process_time() - c0})
        print(f"host run {len(records):3d} {config:18s} {records[-1]['seconds']:.2f} s", file=sys.stderr, flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=ROOT / ".bench" / "host.json")
    parser.add_argument("--peak", choices=list(CONFIGS), help="peak memory of one configuration (fresh process)")
    parser.add_argument("--configs", nargs="*", choices=list(CONFIGS), help="time only these (default: all)")
    args = parser.parse_args(argv)
    setup_host(args.comfyui.resolve())
    if args.peak:
        print(json.dumps(peak_child(args.peak)))
        return 0
    records = time_runs(Bench(max(CONFIGS[c][1] for c in args.configs or CONFIGS)), args.repeats, args.configs)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
