"""Train the toy base U-Net (ε-MSE, DDPM linear schedule) on fill-circles (or shape classes) and write its EMA weights.

`python -m controlnet_core.toy.base --out controlnet_core/toy/base.safetensors` remakes the committed file
(12,000 steps, AdamW lr 1e-3 with 100 warm-up steps and cosine decay, clip 1.0, EMA 0.995, batch 32, 10 % empty
prompts so the empty prompt is a valid input as in SD; seed 0; one thread; about 20 minutes of one idle core, final
loss 0.0082). A 3,000-step base (loss about 0.02) renders the prompt's colours muted or wrong, which capped the
ControlNet's shape IoU near 0.76; at 12,000 steps the colours follow the prompt and the IoU passes 0.8.
`python -m controlnet_core.toy.base --data shapes --steps 3000 --out controlnet_core/toy/shapes_base.safetensors`
remakes the shape-class base of the prompt-drop claim (controlnet_core/toy/shapes.py).
"""
from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..train.diffusion import TOY_SCHEDULE, q_sample
from .data import CircleBatch, drop_prompts, fill_circles
from .model import ToyBase, build_base, save_base

log = logging.getLogger(__name__)


def train_base(steps: int = 12000, batch: int = 32, lr: float = 1e-3, seed: int = 0,
               data: Callable[[int, torch.Generator], CircleBatch] = fill_circles) -> ToyBase:
    """The base's own training loop (not the ControlNet recipe) on `data` (fill-circles or shapes.shapes); returns
    the EMA model."""
    base = build_base(seed)
    params = [*base.unet.parameters(), *base.text.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warm)
    ema = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(seed)
    ac = TOY_SCHEDULE.alphas_cumprod().float()
    start = time.perf_counter()
    for step in range(steps):
        sample = data(batch, gen)
        tokens = drop_prompts(sample.tokens, 0.1, gen)
        t = torch.randint(0, TOY_SCHEDULE.steps, (batch,), generator=gen)
        noise = torch.randn(sample.target.shape, generator=gen)
        x_t = q_sample(sample.target, t, noise, ac)
        loss = F.mse_loss(base.unet(x_t, t, base.text(tokens)), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for e, p in zip([*ema.unet.parameters(), *ema.text.parameters()], params):
                e.lerp_(p, 1 - 0.995)
        if step % 250 == 0 or step == steps - 1:
            log.info("base step %d/%d loss %.4f (%.0f s)", step, steps, loss.item(), time.perf_counter() - start)
    return ema


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", choices=("circles", "shapes"), default="circles",
                    help="fill-circles (base.safetensors) or shape classes (shapes_base.safetensors)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    from .shapes import shapes

    ema = train_base(args.steps, seed=args.seed, data=shapes if args.data == "shapes" else fill_circles)
    save_base(ema, args.out, {"steps": str(args.steps), "seed": str(args.seed), "data": args.data,
                              "command": f"python -m controlnet_core.toy.base --data {args.data} --out {args.out} "
                                         f"--steps {args.steps}"})
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
