"""Data parallel: 2 CPU processes (torchrun, gloo; accelerate launch --multi_gpu, gloo) with the same global batch give
the weights of 1 process; the saved metadata says how many processes trained (so 2 independent 1-process runs,
which would also match, fail)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


def launch(tmp_path: Path, nproc: int, steps: int = 3, engine: str = "torchrun") -> dict[str, torch.Tensor]:
    out = tmp_path / f"{engine}{nproc}.safetensors"
    port = str(29500 + nproc + (10 if engine == "accelerate" else 0) + os.getpid() % 1000)
    if engine == "accelerate":  # accelerate's launcher, no config file; --multi_gpu (torchrun underneath, MULTI_CPU
        # without CUDA) needs >= 2 processes: accelerate refuses 1 ("You need to use at least 2 processes"), which is
        # what made this test fail before, not unequal weights
        multi = ["--multi_gpu", "--main_process_port", port] if nproc > 1 else []
        runner = ["-m", "accelerate.commands.launch", *multi, "--num_processes", str(nproc), "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        runner = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", port]
    cmd = [sys.executable, *runner, "-m", "controlnet_core.train.launch", "toy", "--engine", engine,
           "--steps", str(steps), "--batch", "8", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["controlnet_core.world_size"] == str(nproc)
    return load_file(str(out))


def relative_error(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> float:
    assert one.keys() == two.keys()
    a = torch.cat([one[k].double().flatten() for k in sorted(one)])
    b = torch.cat([two[k].double().flatten() for k in sorted(one)])
    return ((a - b).norm() / a.norm()).item()


def test_two_processes_equal_one_process(tmp_path):
    one, two = launch(tmp_path, 1), launch(tmp_path, 2)
    assert one.keys() == two.keys()
    a = torch.cat([one[k].double().flatten() for k in sorted(one)])
    b = torch.cat([two[k].double().flatten() for k in sorted(one)])
    # whole-model relative error (gloo sums in another order: tiny hint biases differ by ~2e-8 absolute)
    assert (a - b).norm() <= 1e-5 * a.norm()
    assert one["middle_block_out.0.weight"].abs().max() > 0


def update_relative_error(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> float:
    """|Δ1 - Δ2| / |Δ1| of the updates from the initial ControlNet (the weights' norm hides the update's)."""
    from controlnet_core.toy import run as toy

    init = toy.make_controlnet(toy.load_base()).state_dict()
    return relative_error({k: one[k] - init[k] for k in one}, {k: two[k] - init[k] for k in one})


def test_accelerate_two_processes_equal_one_process(tmp_path):
    one, two = launch(tmp_path, 1, engine="accelerate"), launch(tmp_path, 2, engine="accelerate")
    # measured (3 steps, batch 8): weights 4.9e-8 relative, the update itself 1.5e-5 (gloo's summation order,
    # amplified by Adam on near-zero gradients); a rank on the wrong slice would differ by O(1) in the update
    assert relative_error(one, two) <= 1e-5
    assert update_relative_error(one, two) <= 1e-3
    assert relative_error(one, launch(tmp_path, 1)) <= 1e-6  # accelerate's 1 process == the plain one
    assert one["middle_block_out.0.weight"].abs().max() > 0
