"""Host side of TrainControlNet: the MODEL's U-Net weights as our reference U-Net, VAE latents of the targets, the
host's progress bar and interruption, and the host's models/controlnet folder as the destination.

Training follows the host's own TrainLoraNode (comfy_extras/nodes_train.py) where it fits: inference mode is turned
off around the loop (the host runs nodes under torch.inference_mode), one progress step per optimiser step, the
interrupt button checked every step. Unlike it, the base is our `ControlledUNet` (a copy of the MODEL's weights),
so the production ControlNet code is what is trained.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

import comfy.model_management
import comfy.utils
import folder_paths

from ...controlnet_core.controlnet import create_controlnet_from_unet
from ...controlnet_core.errors import ControlNetError
from ...controlnet_core.train.data import PairedDataset
from ...controlnet_core.train.export import save_trained, training_metadata
from ...controlnet_core.train.recipe import Batch, TrainConfig, Trainer
from ...controlnet_core.unet import ControlledUNet, UNetConfig
from .ui import frame_jpeg

log = logging.getLogger(__name__)
CONTROLNET_FOLDER = "controlnet"


def output_path(filename: str) -> tuple[str, str]:
    """(name, absolute path) in the first `controlnet` folder; `name_00001.safetensors`... when taken."""
    folder = folder_paths.get_folder_paths(CONTROLNET_FOLDER)[0]
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(filename)
    name, n = filename, 0
    while os.path.exists(os.path.join(folder, name)):
        n += 1
        name = f"{stem}_{n:05d}{ext}"
    return name, os.path.join(folder, name)


def base_unet(model, device: torch.device, *, trained_decoder: bool = False) -> ControlledUNet:
    """The MODEL's U-Net (its patches, e.g. LoRAs, applied) as our fp32 `ControlledUNet`. Its weights are the
    host's own tensors where they are fp32 on `device` and frozen (no second 3.4 GB copy of SD1.5); the decoder is
    copied when it is trained (`trained_decoder`), so the host's model is never changed."""
    comfy.model_management.load_models_gpu([model], force_full_load=True)
    sd = {k: _frozen_view(v, device, copy=trained_decoder and k.startswith(("output_blocks.", "out.")))
          for k, v in model.model.diffusion_model.state_dict().items()}
    config = UNetConfig.from_state_dict(sd, source="the MODEL's U-Net")
    if config.adm_in_channels is not None:
        raise ControlNetError("Train ControlNet (Core) trains SD1.x / SD2.x ControlNets; this MODEL's U-Net has a "
                              f"class embedding (adm {config.adm_in_channels}, e.g. SDXL). Load an SD1.5 or SD2.x "
                              "checkpoint.")
    with torch.device("meta"):
        unet = ControlledUNet(config)  # no allocation: the tensors are assigned below
    unet.load_state_dict(sd, strict=True, assign=True)
    return unet


def _frozen_view(v: Tensor, device: torch.device, *, copy: bool) -> Tensor:
    """`v` as an fp32 tensor on `device` usable by autograd: itself when possible, else a copy (an inference-mode
    tensor cannot be saved for backward)."""
    out = v.detach().to(device, torch.float32)
    if copy or out.is_inference() or out.data_ptr() == v.data_ptr() and v.requires_grad:
        out = out.clone()
    return out


def context(conditioning, what: str) -> Tensor:
    """A CONDITIONING's cross-attention tensor (1, T, D), as an ordinary (not inference) fp32 tensor."""
    if not conditioning:
        raise ControlNetError(f"{what} is an empty CONDITIONING; connect a CLIP Text Encode.")
    return conditioning[0][0][:1].detach().float().clone()


def encode_targets(vae, model, targets: Tensor) -> Tensor:
    """targets (B, 3, S, S) in [-1, 1] -> scaled latents (B, 4, S/8, S/8), as the host's sampler sees them."""
    pixels = ((targets + 1) / 2).permute(0, 2, 3, 1)  # (B, S, S, 3) in [0, 1]
    with torch.no_grad():
        latent = vae.encode(pixels)  # (B, 4, h, w), unscaled
        return model.model.process_latent_in(latent.float().cpu()).clone()


def preview_frame(trainer: Trainer, vae, model, noise: Tensor, hint: Tensor, ctx: Tensor) -> Tensor:
    """hint | sample side by side, (H, 2W, 3) in [0, 1]: a DDIM sample (10 steps, no CFG) of the first pair's hint
    and the prompt from fixed noise (1, 4, h, w), decoded by the VAE (the reference logger's periodic samples)."""
    latent = trainer.sample(noise, hint, ctx)  # (1, 4, h, w), scaled
    with torch.no_grad():
        pixels = vae.decode(model.model.process_latent_out(latent.float().cpu()))  # (1, H, W, 3) in [0, 1]
    pixels = pixels.reshape(-1, *pixels.shape[-3:])[0].float().cpu().clamp(0, 1)
    shown = hint[0].permute(1, 2, 0).float().cpu()  # (H, W, 3)
    if shown.shape[:2] != pixels.shape[:2]:
        shown = torch.nn.functional.interpolate(shown.permute(2, 0, 1)[None], size=pixels.shape[:2])[0].permute(1, 2, 0)
    return torch.cat([shown, pixels], dim=1)


def train_controlnet(model, vae, positive, empty, dataset: PairedDataset, config: TrainConfig, steps: int,
                     filename: str, extra: dict[str, str],
                     on_step: Callable[[int, float], None] | None = None,
                     preview_every: int = 0) -> tuple[str, list[float]]:
    """Train `steps` optimiser steps on `dataset`; save into models/controlnet; returns (file name, losses).
    Every `preview_every` steps (0: never) and at the last step, the progress bar carries a sample preview."""
    device = comfy.model_management.get_torch_device()
    bar = comfy.utils.ProgressBar(steps)
    with torch.inference_mode(False), torch.enable_grad():
        pos = context(positive, "positive")
        empty_ctx = context(empty, "empty_conditioning") if empty is not None else torch.zeros_like(pos)
        if empty_ctx.shape[1:] != pos.shape[1:]:
            raise ControlNetError(f"empty_conditioning {tuple(empty_ctx.shape)} and positive {tuple(pos.shape)} "
                                  "differ in shape; encode both with the same CLIP.")
        unet = base_unet(model, device, trained_decoder=not config.sd_locked)
        controlnet = create_controlnet_from_unet(unet.state_dict()).to(device, torch.float32)
        trainer = Trainer(unet, controlnet, config, empty_ctx.to(device))
        order = torch.Generator().manual_seed(config.seed)
        queue: list[int] = []
        preview_hint = preview_noise = None
        for step in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            indices = next_indices(queue, len(dataset), config.batch_size, order)
            targets, hints, _ = dataset.batch(indices)  # (B, 3, S, S) each; prompts: `positive` is used
            x0 = encode_targets(vae, model, targets).to(device)
            batch = Batch(x0=x0, hint=hints.to(device), context=pos.to(device).expand(len(indices), -1, -1))
            loss = trainer.train_step([batch] * config.grad_accumulation)
            frame = None
            if preview_every and ((step + 1) % preview_every == 0 or step + 1 == steps):
                if preview_noise is None:  # fixed: the first pair's hint, noise from the seed
                    preview_hint = dataset.batch([0])[1].to(device)  # (1, 3, S, S)
                    g = torch.Generator().manual_seed(config.seed)
                    preview_noise = torch.randn((1, *x0.shape[1:]), generator=g).to(device)
                frame = frame_jpeg(preview_frame(trainer, vae, model, preview_noise, preview_hint, pos.to(device)))
            bar.update_absolute(step + 1, steps, frame)
            if on_step is not None:
                on_step(step + 1, loss)
        name, path = output_path(filename)
        weights = {k: v.cpu() for k, v in trainer.controlnet_weights().items()}
        save_trained(weights, path, training_metadata(config, trainer.step, **extra))
    log.info("trained a ControlNet for %d steps (loss %.4g -> %.4g): %s", steps, trainer.losses[0],
             trainer.losses[-1], path)
    return name, list(trainer.losses)


def next_indices(queue: list[int], size: int, batch: int, generator: torch.Generator) -> list[int]:
    """Epoch-wise shuffled sampling: `batch` indices off `queue`, refilled with a new permutation when short."""
    while len(queue) < batch:
        queue.extend(torch.randperm(size, generator=generator).tolist())
    taken, queue[:] = queue[:batch], queue[batch:]
    return taken


__all__: Sequence[str] = ("output_path", "preview_frame", "train_controlnet")
