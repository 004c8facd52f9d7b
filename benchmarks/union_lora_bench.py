"""Union and Control-LoRA per-run cost ratios (U-Net + controls) / (U-Net), in `make bench`'s setting.

    python -m benchmarks.union_lora_bench [--repeats 2]

SD1.5 architecture, random fp16 weights cast once, 256x256 (32x32 latent), 4 Euler steps, CFG 7 (benchmarks/
sampling.py). Rows:
- union2-onepass: two applies of one union file (types depth + canny) with one window: ONE forward per step;
- union2-twopass: the same two conditions with different windows (both active on every step): two forwards, as the
  host runs two union applies;
- k1: a plain ControlNet; control-lora: a Control-LoRA merged once into the U-Net's weights (the merge, done once
  per base-model state, is timed apart and reported).
Each run sits between two U-Net-only runs (benchmarks/timing.py). Writes the table to stdout and .bench/union_lora.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import torch

from controlnet_core.controlnet import ControlNetConfig
from controlnet_core.engine import Control, ResidualEngine, prepare_for_device

from .sampling import inputs, sample, sd15_controlnet, sd15_unet
from .sampling import random_state_dict as random_weights_of
from .timing import schedule, summary

log = logging.getLogger("benchmarks.union_lora")
RESULTS = Path(__file__).resolve().parents[1] / ".bench" / "union_lora.md"
CONFIGS = ("unet", "k1", "union2-onepass", "union2-twopass", "control-lora")


def sd15_union(device, dtype):
    """SD1.5-architecture ProMax-like union ControlNet (8 types) with random weights, fuser included."""
    from controlnet_core.union import UnionControlNet

    with torch.device("meta"):
        net = UnionControlNet(ControlNetConfig(), 8)
    sd = random_weights_of(net, 31)
    net = net.to_empty(device="cpu")
    net.load_state_dict(sd, strict=True)
    return prepare_for_device(net, device, dtype)


def sd15_control_lora(unet, device, dtype, rank: int = 16):
    """(merged ControlNet, merge seconds) of a random SD1.5 Control-LoRA (rank 16 here) on the U-Net's weights."""
    from controlnet_core.control_lora import merge_into_base, read_base_delta
    from tests.host.union_lora_files import control_lora_sd15

    delta = read_base_delta({k: v.half() if v.is_floating_point() and v.ndim else v
                             for k, v in control_lora_sd15(41, rank).items()}, f"control_lora_rank{rank}_random")
    base = unet.state_dict()
    t0 = time.perf_counter()
    net = merge_into_base(delta, base, dtype=dtype, device=device)
    return prepare_for_device(net, device, dtype), time.perf_counter() - t0


def controls_for(config, nets, hints):
    if config == "unet":
        return []
    if config == "k1":
        return [Control(nets["cn"], hints[0])]
    if config == "control-lora":
        return [Control(nets["lora"], hints[0])]
    second_end = 1.0 if config == "union2-onepass" else 0.9999  # 0.9999: not grouped, still active every step
    return [Control(nets["union"], hints[0], union_type=1),
            Control(nets["union"], hints[1], union_type=3, end_percent=second_end)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    torch.manual_seed(0)
    unet = sd15_unet(device, dtype)
    lora, merge_s = sd15_control_lora(unet, device, dtype)
    nets = {"cn": sd15_controlnet(1, device, dtype), "union": sd15_union(device, dtype), "lora": lora}
    data = inputs(device, dtype)
    engine = ResidualEngine()
    sample(unet, controls_for("k1", nets, data["hints"]), engine, data["noise"], data["cond"], data["uncond"],
           steps=1)  # warm-up
    runs, cpu_runs = [], []
    load_before = os.getloadavg()[0]
    for config in schedule(CONFIGS, args.repeats):
        controls = controls_for(config, nets, data["hints"])
        t0, c0 = time.perf_counter(), time.process_time()
        sample(unet, controls, engine, data["noise"], data["cond"], data["uncond"])
        runs.append((config, time.perf_counter() - t0))
        cpu_runs.append((config, time.process_time() - c0))
        log.info("%s %.2f s", config, runs[-1][1])
    st, cpu = summary(runs), summary(cpu_runs)
    head = (f"union / Control-LoRA, {device} {dtype}, {args.repeats} repeats, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    columns = ("| configuration | s / run | ratio to U-Net (median, low-high) | from process CPU time (less sensitive "
               "to other processes) |")
    lines = [head, "", columns, "|---|---|---|---|"]
    for config in CONFIGS:
        s, c = st[config], cpu[config]
        lines.append(f"| {config} | {s['seconds']:.2f} | {s['ratio']:.3f} ({s['low']:.3f}-{s['high']:.3f}) | "
                     f"{c['ratio']:.3f} ({c['low']:.3f}-{c['high']:.3f}) |")
    lines.append(f"\nControl-LoRA merge (once per base-model state, not per run): {merge_s:.2f} s")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
