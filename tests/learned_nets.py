"""Random-weight files of the learned preprocessors' real architectures, saved as upstream saves them, and the
controlnet_aux 0.0.10 detectors built around the same weights (the oracles of tests/core/test_preprocess_learned.py
and benchmarks/preprocess_nets_bench.py).

Weights are drawn per tensor with a fan-in-scaled normal (BatchNorm statistics near identity), then the layers that
decide the output range are rescaled (`_GAIN`) so the hints span their range instead of saturating: with plain
random weights HED's sigmoid is almost always 1 and every comparison would pass on a white image.
"""
from __future__ import annotations

import functools
import types
from pathlib import Path

import numpy as np
import torch

from controlnet_core.preprocess.nets import Architecture, key_shapes
from controlnet_core.preprocess.nets.hed import HED
from controlnet_core.preprocess.nets.lineart import LINEART, LINEART_COARSE
from controlnet_core.preprocess.nets.lineart_anime import LINEART_ANIME
from controlnet_core.preprocess.nets.mlsd import MLSD_LARGE, MLSD_TINY
from controlnet_core.preprocess.nets.normalbae import NORMAL_BAE
from controlnet_core.preprocess.nets.pidinet import PIDINET
from controlnet_core.preprocess.nets.teed import TEED

ALL = (HED, PIDINET, TEED, LINEART, LINEART_COARSE, LINEART_ANIME, MLSD_LARGE, MLSD_TINY, NORMAL_BAE)

# (architecture name, key prefix) -> multiplier of the fan-in-scaled weights
_GAIN = {
    "hed": {"": 1.0, "norm": 0.0, "block1.convs.0.weight": 1 / 128,  # the input is on the 0-255 scale
            **{f"block{i}.projection.weight": 20.0 for i in range(1, 6)}},
    "pidinet": {"": 1.0, "classifier.weight": 4.0},
    "teed": {"": 1.0, "block_1.conv1.weight": 1 / 128, "up_block_1.features.2.": 10.0,
             "up_block_2.features.2.": 10.0, "up_block_3.features.5.": 10.0},
    "lineart_realistic": {"": 1.0},
    "lineart_coarse": {"": 1.0},
    "lineart_anime": {"": 1.0, "model.model.3.": 0.3},
    "mlsd_large": {"": 1.0},
    "mlsd_tiny": {"": 1.0},
    "normal_bae": {"": 1.0},
}


def random_weights(arch: Architecture, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with `arch`'s real keys and shapes and reproducible random values."""
    with torch.device("meta"):
        shapes = key_shapes(arch.build())
    gains = _GAIN.get(arch.name, {"": 1.0})
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0)
            continue
        if key.endswith("running_var"):
            value = torch.rand(shape, generator=gen) * 0.5 + 0.75
        elif key.endswith("running_mean"):
            value = torch.randn(shape, generator=gen) * 0.05
        elif key.endswith(".weight") and len(shape) == 1:  # norm scale
            value = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            value = torch.randn(shape, generator=gen) / fan_in ** 0.5
        gain = max((p for p in gains if key.startswith(p)), key=len)
        out[key] = value * gains[gain]
    return out


def save_upstream(arch: Architecture, sd: dict[str, torch.Tensor], folder: Path) -> Path:
    """Save `sd` under the published name as the upstream file is stored: HED in fp16, PiDiNet as
    {"state_dict": {"module." + k}}, NormalBAE as {"model": {"module." + k}}, anime lineart with `module.`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / arch.files[0]
    if arch.name == "hed":
        obj = {k: v.half() for k, v in sd.items()}
    elif arch.name == "pidinet":
        obj = {"state_dict": {"module." + k: v for k, v in sd.items()}}
    elif arch.name == "normal_bae":
        obj = {"model": {"module." + k: v for k, v in sd.items()}}
    elif arch.name == "lineart_anime":
        obj = {"module." + k: v for k, v in sd.items()}
    else:
        obj = dict(sd)
    torch.save(obj, path)
    return path


def stored(arch: Architecture, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The values as they come back from the saved file (HED's fp16 rounding)."""
    return {k: v.half().float() for k, v in sd.items()} if arch.name == "hed" else sd


def reference_module(arch: Architecture, sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """controlnet_aux's own module of `arch`, loaded strictly with `sd` (as its from_pretrained would)."""
    if arch.name == "hed":
        from controlnet_aux.hed import ControlNetHED_Apache2 as build
    elif arch.name == "pidinet":
        from controlnet_aux.pidi.model import pidinet as build
    elif arch.name == "teed":
        from controlnet_aux.teed.ted import TED as build
    elif arch.name.startswith("lineart_") and arch.name != "lineart_anime":
        from controlnet_aux.lineart import Generator
        build = functools.partial(Generator, 3, 1, 3)
    elif arch.name == "lineart_anime":
        from controlnet_aux.lineart_anime import UnetGenerator
        norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
        build = functools.partial(UnetGenerator, 3, 1, 8, 64, norm_layer=norm, use_dropout=False)
    elif arch.name == "mlsd_large":
        from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large as build
    elif arch.name == "mlsd_tiny":
        from controlnet_aux.mlsd.models.mbv2_mlsd_tiny import MobileV2_MLSD_Tiny as build
    elif arch.name == "normal_bae":
        from controlnet_aux.normalbae.nets.NNET import NNET
        args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                     importance_ratio=0.7)
        build = functools.partial(NNET, args)
    else:
        raise KeyError(arch.name)
    module = build()
    module.load_state_dict(stored(arch, sd), strict=True)
    return module.float().eval()


def reference_detector(arch: Architecture, sd: dict[str, torch.Tensor]):
    """The controlnet_aux detector object wrapping the reference module (call it on an (H, W, 3) uint8 array)."""
    import controlnet_aux as aux

    net = reference_module(arch, sd)
    if arch.name == "hed":
        return aux.HEDdetector(net)
    if arch.name == "pidinet":
        return aux.PidiNetDetector(net)
    if arch.name == "teed":
        from controlnet_aux.teed import TEEDdetector
        return TEEDdetector(net)
    if arch.name in ("lineart_realistic", "lineart_coarse"):
        return aux.LineartDetector(net, net)
    if arch.name == "lineart_anime":
        return aux.LineartAnimeDetector(net)
    if arch.name.startswith("mlsd"):
        return aux.MLSDdetector(net)
    return aux.NormalBaeDetector(net)
