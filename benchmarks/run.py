"""`make bench`: per-run cost ratio (U-Net + k controls) / (U-Net), ours vs the host's native vs the FLOP ideal.

    python -m benchmarks.run [--repeats 3] [--device cpu] [--no-memory]
    COMFYUI_PATH=/path/to/ComfyUI python -m benchmarks.run        # adds the host's native ControlNet side by side

Settings (issue 4): SD1.5 architecture, random fp16 weights (cast once to the compute dtype), 256x256 image
(32x32 latent), 4 Euler steps, CFG 7 (cond + uncond in one batch of 2), `--repeats` runs each (default 3). Each
run sits between two U-Net-only runs and its ratio is taken against their mean (benchmarks/timing.py), so load from
other processes that drifts over the run cancels. The host side (when COMFYUI_PATH is set) runs first, both
sides in one host process. Peak memory: each configuration in a fresh subprocess, peak resident set size during the
sampling run (VmHWM reset after loading) or CUDA max allocated.
Writes the table to stdout and to .bench/results.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from .host_bench import CONFIGS as HOST_CONFIGS
from .sampling import CFG, CONFIGS, LATENT, STEPS, controls_for, inputs, sample, sd15_controlnet, sd15_unet
from .timing import schedule, summary

log = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / ".bench" / "results.md"
# Peak-memory children: every allocation above 64 KiB is its own mmap, returned to the system when freed, so the
# resident set follows the live tensors rather than what glibc keeps of freed heap (one setting for both sides;
# without it the same run's peak moves by ~150 MiB from process to process).
PEAK_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
LABELS = {
    "unet": "U-Net only (k=0)",
    "k1": "k=1 Balanced",
    "k2": "k=2 Balanced",
    "k3": "k=3 Balanced",
    "k1-cond-only": "k=1 ControlNet is more important (cond-only)",
    "k1-reuse2": "k=1 reuse residuals every 2 steps (approx.)",
    "t2i": "T2I-Adapter SD1.5 full (features once per run)",
    "union2": "Union, 2 types of one file, one window (ours: one pass; host: one pass per type)",
    "control-lora": "Control-LoRA SD1.5 rank 128 (ours: merged once per base state)",
}
T2I = "t2i"  # not a ControlNet configuration of sampling.CONFIGS: one SD1.5 full T2I-Adapter, random weights
UNION2, CONTROL_LORA = "union2", "control-lora"  # kinds of issue 9 (benchmarks/union_lora_bench.py builds them)
CONTROL_LORA_RANK = 128  # as benchmarks/host_bench.py: Stability's SD1.5 Control-LoRAs
ALL_CONFIGS = [*CONFIGS, T2I, UNION2, CONTROL_LORA]


def sd15_t2i_adapter(device: torch.device, dtype: torch.dtype):
    """SD1.5 full T2I-Adapter (TencentARC structure, 3-channel hint) with random weights."""
    from controlnet_core.t2i_adapter import T2IAdapter, T2IAdapterConfig

    from .sampling import build

    return build(T2IAdapter, T2IAdapterConfig(), 200, device, dtype)


def run_controls(config: str, nets, adapter, hints, kinds: dict | None = None) -> list:
    """The Controls of a configuration, fresh (empty caches): the T2I row, a union / Control-LoRA row (`kinds`, from
    kind_nets) or a sampling.CONFIGS row."""
    from controlnet_core.engine import Control

    from .union_lora_bench import controls_for as kind_controls

    if config in (UNION2, CONTROL_LORA):
        return kind_controls({UNION2: "union2-onepass"}.get(config, config), kinds, hints)
    return [Control(adapter, hints[0])] if config == T2I else controls_for(config, nets, hints)


def kind_nets(configs, unet, device: torch.device, dtype: torch.dtype) -> dict:
    """{"union": ProMax-like union net, "lora": Control-LoRA merged into `unet`'s weights, "merge_s": seconds of that
    one merge} for the configurations that need them (benchmarks/union_lora_bench.py builders)."""
    from .union_lora_bench import sd15_control_lora, sd15_union

    out: dict = {}
    if UNION2 in configs:
        out["union"] = sd15_union(device, dtype)
    if CONTROL_LORA in configs:
        out["lora"], out["merge_s"] = sd15_control_lora(unet, device, dtype, rank=CONTROL_LORA_RANK)
        log.info("Control-LoRA merged once in %.2f s (not part of any timed run)", out["merge_s"])
    return out


# --------------------------------------------------------------------------------------------------- timing

def sync(device: torch.device) -> None:
    """Wait for queued device work (timing only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_configs(configs: list[str], repeats: int, device: torch.device, dtype: torch.dtype
                 ) -> tuple[list[dict], dict]:
    """One record per run ({config, seconds, cpu_seconds}) in `timing.schedule` order, and {config: final latent
    of its first run}."""
    from controlnet_core.engine import ResidualEngine

    n_nets = max(CONFIGS[c][0] for c in configs if c in CONFIGS)
    adapter = sd15_t2i_adapter(device, dtype) if T2I in configs else None
    log.info("building the SD1.5 U-Net and %d ControlNets (random fp16 weights -> %s on %s)", n_nets, dtype, device)
    unet = sd15_unet(device, dtype)
    nets = [sd15_controlnet(1 + i, device, dtype) for i in range(n_nets)]
    kinds = kind_nets(configs, unet, device, dtype)
    data = inputs(device, dtype)
    engine = ResidualEngine()
    records, latents = [], {}
    sample(unet, controls_for("k1", nets, data["hints"]) if nets else [], engine, data["noise"], data["cond"],
           data["uncond"], steps=1)  # warm-up: allocator and kernel selection
    for config in (c for c in (UNION2, CONTROL_LORA) if c in configs):  # warm-up of the kinds' first forward
        sample(unet, run_controls(config, nets, adapter, data["hints"], kinds), engine, data["noise"], data["cond"],
               data["uncond"], steps=1)
    for config in schedule(configs, repeats):
        controls = run_controls(config, nets, adapter, data["hints"], kinds)  # fresh: the hint encoded once per run
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        x = sample(unet, controls, engine, data["noise"], data["cond"], data["uncond"])
        sync(device)
        records.append({"config": config, "seconds": time.perf_counter() - t0,
                        "cpu_seconds": time.process_time() - c0})
        latents.setdefault(config, x.float().cpu())
        log.info("run %3d %-14s %.2f s", len(records), config, records[-1]["seconds"])
    return records, latents


# --------------------------------------------------------------------------------------------------- FLOPs

def flop_counts() -> dict[str, float]:
    """GFLOP of one step's pieces, counted by torch.utils.flop_counter on the meta device (SDPA decomposes)."""
    from torch.utils.flop_counter import FlopCounterMode

    from controlnet_core.controlnet import ControlNet, ControlNetConfig
    from controlnet_core.t2i_adapter import T2IAdapter, T2IAdapterConfig
    from controlnet_core.unet import ControlledUNet, UNetConfig

    with torch.device("meta"):
        unet, net = ControlledUNet(UNetConfig()), ControlNet(ControlNetConfig())
        adapter = T2IAdapter(T2IAdapterConfig())
        x2, x1 = torch.empty(2, 4, LATENT, LATENT), torch.empty(1, 4, LATENT, LATENT)
        t2, t1 = torch.empty(2), torch.empty(1)
        c2, c1 = torch.empty(2, 77, 768), torch.empty(1, 77, 768)
        h2, h1 = torch.empty(2, 3, 8 * LATENT, 8 * LATENT), torch.empty(1, 3, 8 * LATENT, 8 * LATENT)

    def count(fn) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9

    return {
        "unet": count(lambda: unet(x2, t2, c2)),
        "cn_batch2": count(lambda: net(x2, h2, t2, c2)),  # hint encoder at 2 rows, as the host runs it
        "hint_batch2": count(lambda: net.encode_hint(h2)),
        "hint_batch1": count(lambda: net.encode_hint(h1)),
        "cn_batch1": count(lambda: net(x1, h1, t1, c1)),
        "t2i_batch1": count(lambda: adapter.encode_hint(h1)),  # once per run (ours)
        "t2i_batch2": count(lambda: adapter.encode_hint(h2)),  # once per run on the cond/uncond hint (host)
        "lora_merge": control_lora_merge_gflop(),  # the host: every forward; ours: once per base state
    }


def control_lora_merge_gflop(rank: int = CONTROL_LORA_RANK) -> float:
    """GFLOP of `W + up @ down` over every factored layer of an SD1.5 Control-LoRA (tests/host/union_lora_files.py
    layout: every >= 2-D encoder weight the U-Net has), as the host's ControlLoraOps compute it in each forward."""
    import math

    from tests.fixtures import SPECS, controlnet_ldm_shapes
    from tests.host.union_lora_files import BASE_PREFIXES

    total = 0
    for key, shape in controlnet_ldm_shapes(SPECS["sd15"]).items():
        if key.startswith(BASE_PREFIXES) and len(shape) >= 2 and key.endswith(".weight"):
            r, n = min(rank, shape[0], shape[1]), math.prod(shape[1:])
            total += 2 * shape[0] * r * n + shape[0] * n  # the product, then the add
    return total / 1e9


def ideal_ratios(g: dict[str, float], steps: int = STEPS) -> dict[str, dict[str, float]]:
    """FLOP ratios per configuration: as the host runs it (hint every step) and as we run it (hint once)."""
    body2 = g["cn_batch2"] - g["hint_batch2"]  # one ControlNet step without the hint encoder, 2 rows
    body1 = g["cn_batch1"] - g["hint_batch1"]
    once = g["hint_batch1"] / steps  # one hint-encoder pass per run, spread over the steps
    u = g["unet"]
    out = {"unet": {"host": 1.0, "ours": 1.0}}
    for k in (1, 2, 3):
        out[f"k{k}"] = {"host": (u + k * g["cn_batch2"]) / u, "ours": (u + k * (body2 + once)) / u}
    out["k1-cond-only"] = {"host": (u + g["cn_batch2"]) / u, "ours": (u + body1 + once) / u}
    out["k1-reuse2"] = {"host": (u + g["cn_batch2"]) / u, "ours": (u + body2 / 2 + once) / u}
    out[T2I] = {"host": (u + g["t2i_batch2"] / steps) / u, "ours": (u + g["t2i_batch1"] / steps) / u}
    out[UNION2] = {"host": (u + 2 * g["cn_batch2"]) / u, "ours": (u + body2 + 2 * once) / u}  # fuser: negligible
    out[CONTROL_LORA] = {"host": (u + g["cn_batch2"] + g["lora_merge"]) / u, "ours": out["k1"]["ours"]}
    return out


# --------------------------------------------------------------------------------------------------- memory

def rss_mb(field: str = "VmRSS") -> float:
    """Resident set (VmRSS) or its peak since the last reset (VmHWM), MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def peak_child(config: str, device: torch.device, dtype: torch.dtype) -> dict:
    """One configuration in this fresh process: models loaded, then the peak of the first sampling run, absolute
    and above the resident set just before it (activations, hint features, residual sets, caches)."""
    import gc

    from controlnet_core.engine import ResidualEngine

    k = CONFIGS[config][0] if config in CONFIGS else 0
    unet = sd15_unet(device, dtype)
    nets = [sd15_controlnet(1 + i, device, dtype) for i in range(k)]
    adapter = sd15_t2i_adapter(device, dtype) if config == T2I else None
    kinds = kind_nets([config], unet, device, dtype)  # a Control-LoRA's merge is done before the measured run
    data = inputs(device, dtype)
    controls = run_controls(config, nets, adapter, data["hints"], kinds)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2 ** 20
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS (Linux)
        base = rss_mb()
    sample(unet, controls, ResidualEngine(), data["noise"], data["cond"], data["uncond"])
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else rss_mb("VmHWM")
    return {"config": config, "peak_mb": peak, "delta_mb": peak - base}


def measure_peaks(commands: dict[str, list[str]], label: str = "peak") -> dict[str, dict]:
    """{config: {peak_mb, delta_mb}}, each configuration's command run in a fresh process with PEAK_ENV."""
    peaks = {}
    for config, cmd in commands.items():
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, env=PEAK_ENV)
        if done.returncode != 0:
            raise RuntimeError(f"peak-memory child for {config} failed (exit {done.returncode}; -9 is usually out "
                               f"of memory):\n{done.stderr[-2000:]}")
        peaks[config] = json.loads(done.stdout.strip().splitlines()[-1])
        log.info("%s %-18s %.0f MiB (+%.0f while sampling)", label, config, peaks[config]["peak_mb"],
                 peaks[config]["delta_mb"])
    return peaks


# --------------------------------------------------------------------------------------------------- host

def host_python(comfyui: Path) -> str:
    """COMFYUI_PYTHON, else the venv next to the checkout, else python3."""
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    venv = comfyui.parent / "venv" / "bin" / "python"
    return str(venv) if venv.exists() else "python3"


def run_host(comfyui: Path, repeats: int, memory: bool, configs: list[str] | None = None) -> dict:
    """benchmarks/host_bench.py in the host's interpreter: native vs ours through our nodes, same settings.
    {"native": {"runs", "peaks"}, "ours": {...}}, configurations named as here (k1, k2, ...); `configs`: only the
    host configurations of these (all when None)."""
    out = ROOT / ".bench" / "host.json"
    script = [host_python(comfyui), str(ROOT / "benchmarks" / "host_bench.py"), "--comfyui", str(comfyui)]
    chosen = [c for c in HOST_CONFIGS if configs is None or c == "unet" or c.split("-", 1)[1] in configs]
    subset = [] if configs is None else ["--configs", *chosen]
    log.info("host benchmark: %s", " ".join(script + subset))
    done = subprocess.run(script + ["--repeats", str(repeats), "--json", str(out), *subset], cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"host benchmark failed (exit {done.returncode}; -9 is usually out of memory); "
                           f"command: {' '.join(script)}")
    runs = json.loads(out.read_text())
    peaks = measure_peaks({c: script + ["--peak", c] for c in chosen}, "host peak") if memory else {}
    return {"runs": runs, "peaks": peaks}


# --------------------------------------------------------------------------------------------------- report

def deviation(latents: dict) -> dict[str, float] | None:
    """Reuse quality: final-latent distance to computing every step, relative to the latent and to the control's
    own effect on it."""
    if not {"k1", "k1-reuse2", "unet"} <= latents.keys():
        return None
    every, reuse, plain = latents["k1"], latents["k1-reuse2"], latents["unet"]
    diff = (reuse - every).norm().item()
    return {"rel_latent": diff / every.norm().item(), "rel_effect": diff / (every - plain).norm().item()}


def fmt(v, spec=".2f", suffix=""):
    return "–" if v is None else f"{v:{spec}}{suffix}"


def fmt_peak(p: dict | None) -> str:
    """"peak (+while sampling)" in MiB."""
    return "–" if not p else f"{p['peak_mb']:.0f} (+{p['delta_mb']:.0f})"


def host_name(side: str, config: str) -> str:
    """The host benchmark's name of a configuration ("unet" is shared by both sides)."""
    return config if config == "unet" else f"{side}-{config}"


def summaries(st: dict, host: dict | None, key: str) -> dict[str, dict]:
    """{"ours" | "ours in host" | "native": {config: summary}} of wall ("seconds") or CPU ("cpu_seconds") time."""
    def pairs(runs):
        return [(r["config"], r[key]) for r in runs]

    out = {"ours": summary(pairs(st["runs"]))}
    if host:
        h = summary(pairs(host["runs"]))
        for side, label in (("ours", "ours in host"), ("native", "native")):
            out[label] = {c: h[host_name(side, c)] for c in LABELS if host_name(side, c) in h}
    return out


def fmt_ratio(s: dict | None) -> str:
    """"median (lowest–highest)" of paired ratios."""
    return "–" if s is None else f"{s['ratio']:.2f} ({s['low']:.2f}–{s['high']:.2f})"


def table(configs, st: dict, host: dict | None) -> str:
    """Headline table: wall-clock cost ratios (median of paired ratios, range), FLOP ideals and peak memory."""
    sums = summaries(st, host, "seconds")
    head = ["configuration", "ours s/run", "ours ratio", "FLOP ideal (ours)"]
    if host:
        head += ["ours in host ratio", "native ratio", "FLOP ideal (native)"]
    head += ["peak MiB ours (+sampling)"] + (["… ours in host", "… native"] if host else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in configs:
        ours = sums["ours"][c]
        row = [LABELS[c], fmt(ours["seconds"]), fmt_ratio(ours), fmt(st["ideals"][c]["ours"])]
        if host:
            row += [fmt_ratio(sums["ours in host"].get(c)), fmt_ratio(sums["native"].get(c)),
                    fmt(st["ideals"][c]["host"])]
        row += [fmt_peak(st["peaks"].get(c))]
        if host:
            row += [fmt_peak(host["peaks"].get(host_name(side, c))) for side in ("ours", "native")]
        lines.append("| " + " | ".join(row) + " |")
    dev = st["reuse"]
    if dev is not None:
        lines.append(f"\nResidual reuse every 2 steps: final latent differs from computing every step by "
                     f"{dev['rel_latent']:.2%} of the latent norm, {dev['rel_effect']:.1%} of the control's own "
                     f"effect on the latent.")
    return "\n".join(lines)


def cpu_table(configs, st: dict, host: dict | None) -> str:
    """Check table: the same paired ratios from process CPU time."""
    sums = summaries(st, host, "cpu_seconds")
    head = ["configuration", *sums]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in configs:
        lines.append("| " + " | ".join([LABELS[c], *(fmt_ratio(s.get(c)) for s in sums.values())]) + " |")
    return "\n".join(lines)


def header(device, dtype, repeats, load_before, load_after) -> str:
    return (f"SD1.5 architecture, random fp16 weights computed as {dtype} on {device}, {8 * LATENT}x{8 * LATENT} "
            f"image ({LATENT}x{LATENT} latent), {STEPS} Euler steps, CFG {CFG:g} (batch 2), {repeats} runs per "
            f"configuration. torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{platform.processor() or platform.machine()}; load average {load_before:.2f} before, "
            f"{load_after:.2f} after. Ratio = a run's time / the mean of the U-Net-only runs just before and after "
            f"it (benchmarks/timing.py): median over repeats (lowest–highest). Peak = resident set of the first "
            f"sampling run in a fresh process (weights included; in brackets: above the loaded state), or CUDA max "
            f"allocated.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="*", default=ALL_CONFIGS, choices=ALL_CONFIGS)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-host", action="store_true", help="ignore COMFYUI_PATH")
    parser.add_argument("--peak", choices=ALL_CONFIGS, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if args.peak:
        print(json.dumps(peak_child(args.peak, device, dtype)))
        return 0
    configs = ["unet", *[c for c in args.configs if c != "unet"]]
    load_before = os.getloadavg()[0]
    ideals = ideal_ratios(flop_counts())
    comfyui = os.environ.get("COMFYUI_PATH")
    # the host first, while this process holds no models (the host process holds both sides, ~12 GB)
    subset = None if set(ALL_CONFIGS) <= set(configs) else configs
    host = run_host(Path(comfyui), args.repeats, not args.no_memory, subset) if comfyui and not args.no_host else None
    runs, latents = time_configs(configs, args.repeats, device, dtype)
    child = [sys.executable, "-m", "benchmarks.run", "--device", args.device, "--peak"]
    peaks = {} if args.no_memory else measure_peaks({c: child + [c] for c in configs})
    standalone = {"runs": runs, "ideals": ideals, "peaks": peaks, "reuse": deviation(latents)}
    write(configs, standalone, host, header(device, dtype, args.repeats, load_before, os.getloadavg()[0]))
    return 0


def write(configs: list[str], st: dict, host: dict | None, head: str) -> None:
    """Print the tables and write .bench/results.md and results.json."""
    report = "\n\n".join([
        head, table(configs, st, host),
        "Check: the same paired ratios from process CPU time (less sensitive to other processes on a shared "
        "machine):", cpu_table(configs, st, host)]) + "\n"
    print(report, flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(f"# make bench ({time.strftime('%Y-%m-%d %H:%M')})\n\n{report}")
    (RESULTS.parent / "results.json").write_text(json.dumps({**st, "host": host}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
