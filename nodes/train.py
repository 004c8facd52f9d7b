"""`TrainControlNet` node: trains a ControlNet on a paired-image folder against the MODEL's U-Net and saves it into
the host's models/controlnet, where Load ControlNet (Core) and the host's own loader find it.

The recipe is controlnet_core.train's (docs/training.md); host calls live in nodes/host/train.py. The positive
prompt is encoded once and used for every pair; `empty_conditioning` (an empty-text CLIP Text Encode) replaces it
with probability `prompt_drop`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from comfy_api.latest import io

from ..controlnet_core.errors import ControlNetError
from ..controlnet_core.train.data import PairedDataset, read_fill50k, read_paired_folders
from ..controlnet_core.train.recipe import TrainConfig
from . import host
from .inputs import text_length_problem
from .host import train as host_train

CURVE_SIZE = (256, 512)  # (H, W) of the loss-curve image


def dataset_problem(path: str) -> str | None:
    """Why `path` is not a training folder (one line naming it), or None."""
    if problem := text_length_problem("dataset", path):
        return problem
    if not path or not path.strip():
        return "dataset is empty: give the path of a folder with target/ and hint/ (or fill50k's prompt.json)"
    root = Path(path.strip()).expanduser()
    if not root.is_dir():
        return f"dataset folder {str(root)!r} does not exist; give a folder with target/ and hint/ (or prompt.json)"
    if not (root / "prompt.json").is_file() and not (root / "target").is_dir():
        return (f"dataset folder {str(root)!r} has neither target/ (+ hint/) nor prompt.json (fill50k layout); "
                "put the images there")
    return None


def read_pairs(path: str):
    """The pairs of a fill50k folder (prompt.json) or of paired target/ + hint/ folders."""
    root = Path(path.strip()).expanduser()
    return read_fill50k(root) if (root / "prompt.json").is_file() else read_paired_folders(root)


def filename_problem(filename: str) -> str | None:
    if problem := text_length_problem("filename", filename):
        return problem
    if not filename or os.path.basename(filename) != filename or filename in (".", ".."):
        return f"filename {filename!r}: give a plain file name (no folders), e.g. my_controlnet.safetensors"
    return None


def with_suffix(filename: str) -> str:
    return filename if filename.endswith(".safetensors") else filename + ".safetensors"


def loss_curve(losses: list[float], size: tuple[int, int] = CURVE_SIZE) -> torch.Tensor:
    """The loss per step as a (1, H, W, 3) image in [0, 1]: white ground, grey frame, blue polyline."""
    h, w = size
    img = torch.ones(h, w, 3)
    img[[0, -1], :], img[:, [0, -1]] = 0.6, 0.6
    if not losses:
        return img[None]
    lo, hi = min(losses), max(losses)
    span = (hi - lo) or 1.0
    xs = torch.linspace(2, w - 3, max(len(losses), 2))
    ys = torch.tensor([(h - 3) - (v - lo) / span * (h - 5) for v in (losses if len(losses) > 1 else losses * 2)])
    for i in range(len(xs) - 1):  # densely sampled segments
        n = int(max(abs(xs[i + 1] - xs[i]), abs(ys[i + 1] - ys[i]))) + 2
        t = torch.linspace(0, 1, n)
        px = (xs[i] + t * (xs[i + 1] - xs[i])).round().long().clamp(0, w - 1)
        py = (ys[i] + t * (ys[i + 1] - ys[i])).round().long().clamp(0, h - 1)
        img[py, px] = torch.tensor([0.1, 0.3, 0.9])
    return img[None]


class TrainControlNet(io.ComfyNode):
    """Thin node: inputs checked, the library's Trainer run by nodes/host/train.py."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CNCore_TrainControlNet",
            display_name="Train ControlNet (Core)",
            category="training",
            description="Trains a ControlNet (paper recipe: zero convolutions, frozen base, prompt drop) on a "
                        "folder of target/hint image pairs against the MODEL's U-Net (SD1.x / SD2.x) and saves it "
                        "into models/controlnet for Load ControlNet (Core) or the host's loader.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The base model (SD1.x / SD2.x); it stays frozen."),
                io.Vae.Input("vae", tooltip="Encodes the target images into latents."),
                io.Conditioning.Input("positive", tooltip="The prompt, encoded once, used for every pair."),
                io.String.Input("dataset", default="", tooltip="Folder with target/ and hint/ (same file names), "
                                "or the fill50k layout (prompt.json, source/, target/)."),
                io.Int.Input("steps", default=100, min=1, max=1000000,
                             tooltip="Optimiser steps (one progress step each)."),
                io.Float.Input("learning_rate", default=1e-5, min=1e-8, max=1.0, step=1e-6,
                               tooltip="AdamW learning rate, constant (reference: 1e-5)."),
                io.Int.Input("batch_size", default=4, min=1, max=1024, tooltip="Pairs per step (reference: 4)."),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=64,
                             tooltip="Images are resized to resolution x resolution."),
                io.String.Input("filename", default="controlnet_trained.safetensors",
                                tooltip="File name in models/controlnet; a number is added when it exists."),
                io.Conditioning.Input("empty_conditioning", optional=True,
                                      tooltip="An empty-text CLIP Text Encode: the prompt used when a pair's "
                                              "prompt is dropped. Needed when prompt_drop > 0."),
                io.Float.Input("prompt_drop", default=0.5, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="Probability of replacing the prompt by the empty one (paper: 0.5)."),
                io.Boolean.Input("sd_locked", default=True, optional=True,
                                 tooltip="Off: also train the base decoder (large-scale training); only the "
                                         "ControlNet is saved."),
                io.Boolean.Input("only_mid_control", default=False, optional=True,
                                 tooltip="Connect only the middle block (small-scale training)."),
                io.Boolean.Input("gradient_checkpointing", default=False, optional=True,
                                 tooltip="Recompute activations in the backward pass: less memory, slower."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, optional=True,
                             tooltip="Seed of the timesteps, noise, prompt drops and pair order."),
                io.Int.Input("preview_every", default=50, min=0, max=1000000, optional=True,
                             tooltip="Every this many steps (and at the last), a sample of the first pair's hint "
                                     "(fixed noise, 10 DDIM steps) is shown as the progress preview; 0: none. "
                                     "The control appears suddenly: watch the samples, not the loss."),
            ],
            outputs=[io.String.Output(display_name="filename",
                                      tooltip="The saved file's name in models/controlnet (for Load ControlNet)."),
                     io.Image.Output(display_name="loss_curve", tooltip="The training loss per step.")],
        )

    @classmethod
    def validate_inputs(cls, dataset: str | None = None, filename: str | None = None, **_) -> bool | str:
        if isinstance(dataset, str):
            problem = dataset_problem(dataset)
            if problem:
                return problem
        if isinstance(filename, str):
            return filename_problem(filename) or True
        return True

    @classmethod
    def execute(cls, model, vae, positive, dataset: str, steps: int, learning_rate: float, batch_size: int,
                resolution: int, filename: str, empty_conditioning=None, prompt_drop: float = 0.5,
                sd_locked: bool = True, only_mid_control: bool = False, gradient_checkpointing: bool = False,
                seed: int = 0, preview_every: int = 50) -> io.NodeOutput:
        problem = dataset_problem(dataset) or filename_problem(filename)
        if problem:
            raise ControlNetError(problem)
        if prompt_drop > 0 and empty_conditioning is None:
            raise ControlNetError(f"prompt_drop {prompt_drop} needs empty_conditioning (a CLIP Text Encode with an "
                                  "empty text); connect one or set prompt_drop to 0.")
        config = TrainConfig(lr=learning_rate, batch_size=batch_size, prompt_drop=prompt_drop, sd_locked=sd_locked,
                             only_mid_control=only_mid_control, gradient_checkpointing=gradient_checkpointing,
                             seed=seed)
        data = PairedDataset(read_pairs(dataset), resolution)
        name, losses = host_train.train_controlnet(model, vae, positive, empty_conditioning, data, config, steps,
                                                   with_suffix(filename), {"dataset": dataset.strip(),
                                                                           "resolution": str(resolution)},
                                                   preview_every=preview_every)
        curve = loss_curve(losses)
        return io.NodeOutput(name, curve, ui=host.preview(curve, cls=cls).as_dict())
