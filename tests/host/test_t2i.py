"""T2I-Adapter through our nodes against the host's own ControlNetLoader + ControlNetApplyAdvanced: same file,
hint and seed -> the same final latent within 1 % of the adapter's effect (issue 9).

Random SD1.5-width adapters (full: 77 M parameters, light: 18 M) in the TencentARC layout the published .pth
files use (the host cannot read a diffusers-layout light adapter, formats_beyond.md §1).
"""
from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from tests.core.test_t2i import tencentarc_from_diffusers
from tests.host import graphs as G
from tests.host.graphs import TOLERANCE, effect_ratio

log = logging.getLogger(__name__)

ADAPTERS = {  # file name -> diffusers T2IAdapter arguments (the published SD1.x structures)
    "t2iadapter_random_sd15_full.safetensors": dict(in_channels=3, channels=[320, 640, 1280, 1280],
                                                    num_res_blocks=2, downscale_factor=8,
                                                    adapter_type="full_adapter"),
    "t2iadapter_random_sd15_light.safetensors": dict(in_channels=3, channels=[320, 640, 1280], num_res_blocks=4,
                                                     downscale_factor=8, adapter_type="light_adapter"),
}


def random_adapter(arguments: dict, seed: int) -> dict[str, torch.Tensor]:
    """TencentARC-layout weights of a random adapter, fp16, weights N(0, 1/fan_in)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    ref = diffusers.T2IAdapter(**arguments)
    sd = {}
    for key, value in ref.state_dict().items():
        scale = value[0].numel() ** -0.5 if value.ndim > 1 else 0.05
        sd[key] = (torch.randn_like(value) * scale).to(torch.float16)
    return tencentarc_from_diffusers(sd, arguments["adapter_type"] == "light_adapter", arguments["num_res_blocks"])


@pytest.fixture(scope="module")
def adapters(server) -> list[str]:
    """The adapter files in the running host's models/controlnet folder (the host lists new files on request)."""
    folder = server.base / "models" / "controlnet"
    for seed, (name, arguments) in enumerate(ADAPTERS.items()):
        path = folder / name
        if not path.exists():
            save_file(random_adapter(arguments, seed), str(path))
    yield list(ADAPTERS)
    for name in ADAPTERS:  # not left in the base dir (CI disk)
        (folder / name).unlink(missing_ok=True)


@pytest.mark.parametrize("name", list(ADAPTERS), ids=["full", "light"])
def test_t2i_adapter_matches_native(server, adapters, name):
    b = G.base()
    G.sample(b, b.positive, b.negative, "t2i_none")
    G.sample(b, *G.apply(b, "ControlNetApplyAdvanced", G.native_loader(b, name), b.positive, b.negative),
             "t2i_native")
    G.sample(b, *G.apply(b, "CNCore_ApplyControlNet", G.core_loader(b, name), b.positive, b.negative), "t2i_ours")
    out = server.run_latents(b.graph.prompt())
    ratio = effect_ratio(out["t2i_ours"], out["t2i_native"], out["t2i_none"])
    log.info("T2I %s parity: |ours-native| / |native-none| = %.3g", name, ratio)
    assert ratio <= TOLERANCE
    assert f"loaded {name}: sd1 {'light' if 'light' in name else 'full'} T2I-Adapter" in server.log_tail(10**7)
