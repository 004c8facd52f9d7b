"""The ControlNet training recipe (paper §3.1-3.3; lllyasviel/ControlNet cldm.py, tutorial_train.py, ddpm.py).

Defaults are the reference code's: AdamW (torch defaults, wd 0.01) at a constant lr 1e-5, batch 4, ε-MSE with
uniform t, fp32, the base frozen (its encoder runs without autograd state because nothing in it needs a gradient),
only the ControlNet trained. Options the paper and the code name: prompt drop (paper §3.3: 0.5; the reference
tutorial used 0), `sd_locked=False` (also train the base decoder: output_blocks + out, cldm.py:419-421),
`only_mid_control` with `reconnect_at` (arXiv v1 §3.5 small-scale training), gradient accumulation, gradient
checkpointing, bf16/fp16 autocast over fp32 master weights, EMA, and checkpoint/resume with optimizer and RNG state.
Data parallel: every rank sees the same global micro-batch and the same random draws and keeps its slice, so N
ranks with the same global batch compute the same update as one.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..controlnet import ControlNet
from ..unet import ControlledUNet
from .diffusion import SD_SCHEDULE, Schedule, ddim_sample, q_sample

log = logging.getLogger(__name__)
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    """Recipe settings; defaults = lllyasviel/ControlNet tutorial_train.py + cldm.py configure_optimizers."""

    lr: float = 1e-5
    batch_size: int = 4  # global micro-batch (all ranks together)
    grad_accumulation: int = 1  # micro-batches per optimiser step
    weight_decay: float = 0.01  # torch AdamW default, as the reference
    prompt_drop: float = 0.5  # paper §3.3; the reference tutorial used 0.0
    sd_locked: bool = True  # False: also train the base decoder (output_blocks, out)
    decoder_lr: float | None = None  # lr of the unlocked decoder (None: lr; the reference docs suggest 2e-6)
    only_mid_control: bool = False  # connect only middle_block_out (small-scale training)
    reconnect_at: int | None = None  # optimiser step from which the skips are connected again
    gradient_checkpointing: bool = False
    autocast: str | None = None  # "bf16" | "fp16"; master weights stay fp32
    ema_decay: float | None = None
    max_grad_norm: float | None = None  # the reference clips nothing
    seed: int = 0
    schedule: Schedule = field(default_factory=lambda: SD_SCHEDULE)

    def __post_init__(self) -> None:
        if self.autocast not in (None, *AUTOCAST):
            raise ValueError(f"autocast {self.autocast!r}: use None, 'bf16' or 'fp16'")
        if not 0.0 <= self.prompt_drop <= 1.0:
            raise ValueError(f"prompt_drop {self.prompt_drop}: use a probability in [0, 1] (paper: 0.5)")
        if self.batch_size < 1 or self.grad_accumulation < 1:
            raise ValueError("batch_size and grad_accumulation must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Batch:
    """One global micro-batch: latents x0 (B, C, h, w), hints (B, Ch, H, W) in [0, 1], text context (B, T, D)."""

    x0: Tensor
    hint: Tensor
    context: Tensor


def adamw(groups: list[dict], **options: float) -> torch.optim.AdamW:
    """torch's AdamW, with its fused kernel where this torch has one for the parameters' device: the same update in
    one pass per tensor instead of a chain of elementwise ops (about 5x faster on the CPU, with no temporaries the
    size of a weight)."""
    try:
        return torch.optim.AdamW(groups, fused=True, **options)
    except (RuntimeError, ValueError) as err:  # an older torch or a device without the fused kernel
        log.debug("fused AdamW unavailable (%s); using the unfused one", err)
        return torch.optim.AdamW(groups, **options)


def mid_only(control: dict[str, list[Tensor]]) -> dict[str, list[Tensor | None]]:
    """Keep only the middle residual (cldm.py `only_mid_control`)."""
    return {"output": [None] * len(control["output"]), "middle": control["middle"]}


class Trainer:
    """Trains `controlnet` against the frozen `unet`; `empty_context` (1, T, D) is the encoded empty prompt."""

    def __init__(self, unet: ControlledUNet, controlnet: ControlNet, config: TrainConfig, empty_context: Tensor,
                 *, rank: int = 0, world_size: int = 1,
                 wrap: Callable[[nn.Module], nn.Module] | None = None):
        self.config, self.rank, self.world_size = config, rank, world_size
        if config.batch_size % world_size:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by {world_size} ranks")
        self.unet, self.controlnet = unet, controlnet
        self.unet.requires_grad_(False).eval()
        self.controlnet.requires_grad_(True).train()
        decoder = [] if config.sd_locked else [*unet.output_blocks.parameters(), *unet.out.parameters()]
        for p in decoder:
            p.requires_grad_(True)
        for m in (unet, controlnet):
            m.gradient_checkpointing = config.gradient_checkpointing
        self.model = wrap(controlnet) if wrap else controlnet  # DDP / accelerate wrap only the ControlNet
        groups = [{"params": list(controlnet.parameters()), "lr": config.lr}]
        if decoder:
            groups.append({"params": decoder, "lr": config.decoder_lr or config.lr})
        self.optimizer = adamw(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.trainable = [p for g in groups for p in g["params"]]
        self.ema = [p.detach().clone() for p in self.trainable] if config.ema_decay else None
        self.empty_context = empty_context
        self.alphas_cumprod = config.schedule.alphas_cumprod().float()
        self.rng = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.losses: list[float] = []

    # ------------------------------------------------------------------------------------------------ the update
    def connected(self) -> bool:
        """Whether the 12 skip residuals are connected at the current step."""
        if not self.config.only_mid_control:
            return True
        return self.config.reconnect_at is not None and self.step >= self.config.reconnect_at

    def _draws(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """t (B,), ε (B, C, h, w), drop (B,) for the whole global micro-batch, from the trainer's own generator."""
        n = batch.x0.shape[0]
        t = torch.randint(0, self.config.schedule.steps, (n,), generator=self.rng)
        noise = torch.randn(batch.x0.shape, generator=self.rng)
        drop = torch.rand(n, generator=self.rng) < self.config.prompt_drop
        return t, noise, drop

    def _local(self, x: Tensor) -> Tensor:
        n = x.shape[0] // self.world_size
        return x[self.rank * n:(self.rank + 1) * n]

    def loss(self, batch: Batch) -> Tensor:
        """ε-MSE on this rank's slice of the global micro-batch (ddpm.py `p_losses`, l_simple)."""
        if batch.x0.shape[0] != self.config.batch_size:
            raise ValueError(f"batch of {batch.x0.shape[0]}; the config's global batch_size is "
                             f"{self.config.batch_size}")
        t, noise, drop = self._draws(batch)
        device = batch.x0.device
        ctx = torch.where(drop[:, None, None].to(device), self.empty_context.to(batch.context), batch.context)
        x0, hint, ctx, t, noise = (self._local(v.to(device)) for v in (batch.x0, batch.hint, ctx, t, noise))
        x_t = q_sample(x0, t, noise, self.alphas_cumprod)  # (b, C, h, w)
        dtype = AUTOCAST.get(self.config.autocast)
        cast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
        with cast:
            control = self.model(x_t, hint, t, ctx)
            if not self.connected():
                control = mid_only(control)
            eps = self.unet(x_t, t, ctx, control=control)  # (b, C, h, w)
        return F.mse_loss(eps.float(), noise)

    def train_step(self, batches: Sequence[Batch]) -> float:
        """One optimiser step over `grad_accumulation` global micro-batches; returns the mean loss."""
        if len(batches) != self.config.grad_accumulation:
            raise ValueError(f"{len(batches)} micro-batches; grad_accumulation is {self.config.grad_accumulation}")
        total = 0.0
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                loss = self.loss(batch) / len(batches)
                loss.backward()
            total += loss.item()
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                for e, p in zip(self.ema, self.trainable):
                    e.lerp_(p.detach(), 1.0 - self.config.ema_decay)
        self.step += 1
        self.losses.append(total)
        return total

    # ------------------------------------------------------------------------------------------------ samples
    @torch.no_grad()
    def sample(self, noise: Tensor, hint: Tensor, context: Tensor, steps: int = 10) -> Tensor:
        """DDIM (eta 0) x0 (B, C, h, w) from `noise` (B, C, h, w) with the current ControlNet (connected as in
        training), `hint` (B, Ch, H, W), `context` (B, T, D): the periodic samples of the reference logger
        (cldm.py `log_images`, without CFG). Leaves the ControlNet's train/eval mode as it was."""
        was = self.controlnet.training
        self.controlnet.eval()
        hint, context = hint.to(noise.device), context.to(noise.device)

        def eps(x: Tensor, t: Tensor) -> Tensor:
            control = self.controlnet(x, hint, t, context)
            if not self.connected():
                control = mid_only(control)
            return self.unet(x, t, context, control=control)

        try:
            return ddim_sample(eps, noise, self.config.schedule, steps)
        finally:
            self.controlnet.train(was)

    # ------------------------------------------------------------------------------------------------ weights
    def controlnet_weights(self, *, ema: bool = False) -> dict[str, Tensor]:
        """The ControlNet's ldm state dict (bare keys), the EMA copy when asked."""
        sd = {k: v.detach().clone() for k, v in self.controlnet.state_dict().items()}
        if ema:
            if self.ema is None:
                raise ValueError("this run has no EMA: set TrainConfig.ema_decay (e.g. 0.999)")
            names = {id(p): n for n, p in self.controlnet.named_parameters()}
            for e, p in zip(self.ema, self.trainable):
                if id(p) in names:
                    sd[names[id(p)]] = e.clone()
        return sd

    def ema_controlnet(self) -> ControlNet:
        net = copy.deepcopy(self.controlnet)
        net.load_state_dict(self.controlnet_weights(ema=True), strict=True)
        return net.eval()

    # ------------------------------------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Everything a resumed run needs: weights, optimizer, EMA, step, RNG, losses."""
        state = {"controlnet": self.controlnet.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "step": self.step, "rng": self.rng.get_state(), "losses": list(self.losses),
                 "config": self.config.to_dict()}
        if not self.config.sd_locked:
            state["decoder"] = {k: v for k, v in self.unet.state_dict().items()
                                if k.startswith(("output_blocks.", "out."))}
        if self.ema is not None:
            state["ema"] = [e.clone() for e in self.ema]
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["config"] != self.config.to_dict():
            log.warning("resuming with a TrainConfig that differs from the checkpoint's %s", state["config"])
        self.controlnet.load_state_dict(state["controlnet"], strict=True)
        if "decoder" in state:
            self.unet.load_state_dict({**self.unet.state_dict(), **state["decoder"]}, strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            for e, s in zip(self.ema, state["ema"]):
                e.copy_(s)
        self.step, self.losses = int(state["step"]), list(state["losses"])
        self.rng.set_state(state["rng"])

    def save(self, path: Path | str, extra: dict | None = None) -> None:
        torch.save({**self.state_dict(), "extra": extra or {}}, str(path))

    def resume(self, path: Path | str) -> dict:
        """Load a `save` file; returns its `extra` (e.g. the data stream's state)."""
        state = torch.load(str(path), map_location="cpu", weights_only=False)
        self.load_state_dict(state)
        return state.get("extra", {})
