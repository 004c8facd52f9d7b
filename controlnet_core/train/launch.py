"""Scale-out entry points; only the ControlNet is wrapped (diffusers train_controlnet.py `accelerator.prepare`).

    torchrun --nproc_per_node 2 -m controlnet_core.train.launch toy --steps 20 --out run.safetensors
    accelerate launch --multi_gpu --num_processes 2 -m controlnet_core.train.launch toy --engine accelerate ...
      (on a CPU-only machine too: 2 gloo processes; tests/core/test_train_dist.py)

Every rank builds the same frozen base and the same global batch; the Trainer keeps its rank's slice, DDP averages
the gradients, so N ranks with the same global batch compute one process's update (tests/core/test_train_dist.py).
"""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)


def torchrun_setup() -> tuple[int, int, Callable[[nn.Module], nn.Module]]:
    """(rank, world size, wrap) from torchrun's environment; gloo on the CPU, nccl on CUDA."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, lambda m: m
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, lambda m: DistributedDataParallel(m)


def accelerate_setup() -> tuple[int, int, Callable[[nn.Module], nn.Module]]:
    """(rank, world size, wrap) from accelerate (DDP, DeepSpeed or FSDP through `accelerate config`).

    Without CUDA, `Accelerator(cpu=True)`: only then does accelerate see the torchrun environment that
    `accelerate launch --multi_gpu` sets up as MULTI_CPU (gloo); `accelerate launch --cpu --num_processes 2` starts
    one process unless MPI is configured (accelerate's simple launcher)."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=not torch.cuda.is_available())
    return acc.process_index, acc.num_processes, acc.prepare


def train_toy(steps: int, out: Path, *, engine: str = "torchrun", batch: int = 8, lr: float = 3e-4,
              seed: int = 0) -> None:
    from ..toy import run as toy
    from .export import save_trained, training_metadata

    rank, world, wrap = (accelerate_setup if engine == "accelerate" else torchrun_setup)()
    torch.manual_seed(seed)
    base = toy.load_base()
    config = toy.recipe(batch_size=batch, lr=lr, seed=seed)
    trainer = toy.Trainer(base.unet, toy.make_controlnet(base), config, toy.empty_context(base), rank=rank,
                          world_size=world, wrap=wrap)
    r = toy.ToyRun(trainer, toy.CircleStream(batch, seed), base)
    toy.advance(r, steps)
    if rank == 0:
        save_trained(trainer.controlnet_weights(), out, training_metadata(config, trainer.step, world_size=world))
        log.info("rank 0 wrote %s after %d steps on %d processes", out, trainer.step, world)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="task", required=True)
    p = sub.add_parser("toy", help="train the toy ControlNet from the committed base")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8, help="global micro-batch")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=("torchrun", "accelerate"), default="torchrun")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    train_toy(args.steps, args.out, engine=args.engine, batch=args.batch, lr=args.lr, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
