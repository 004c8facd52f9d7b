"""Shuffle / global average pooling (formats_beyond.md §7): the file-name rule and the option, then the engine:
pooled residuals on the conditional rows only, broadcast, never materialised by a repeat."""
from __future__ import annotations

import pytest
import torch

from controlnet_core.engine import Control, ResidualEngine
from controlnet_core.errors import CheckpointError
from controlnet_core.formats import global_average_pooling, load_controlnet
from tests.fixtures import random_controlnet_state_dict


@pytest.mark.parametrize(("option", "name", "want"), [
    ("auto", "control_v11e_sd15_shuffle.pth", True),
    ("auto", "control_v11e_sd15_shuffle_fp16.safetensors", True),
    ("auto", "control_lora_rank128_v11e_sd15_shuffle_fp16.safetensors", True),
    ("auto", "sub/dir/control_v11e_sd15_shuffle", True),
    ("auto", "shuffle_control_v11e_sd15.safetensors", False),  # the host's rule is a suffix rule
    ("auto", "control_v11p_sd15_canny.safetensors", False),
    ("on", "my_renamed_net.safetensors", True),
    ("off", "control_v11e_sd15_shuffle.pth", False),
])
def test_option_and_the_hosts_file_name_rule(option, name, want):
    assert global_average_pooling(option, name) is want


def test_unknown_option_is_refused():
    with pytest.raises(CheckpointError, match="global_average_pooling 'yes'.*auto"):
        global_average_pooling("yes", "x.safetensors")


def test_engine_pools_on_conditional_rows_only():
    net = load_controlnet(random_controlnet_state_dict("tiny-sd15", seed=3))
    torch.manual_seed(0)
    hint = torch.rand(1, 3, 64, 64)
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0]), torch.randn(2, 5, 768)
    engine = ResidualEngine()
    plain = engine([Control(net=net, hint=hint)], x, t, ctx, uncond_rows=[False, True], percent=0.0)
    gap = engine([Control(net=net, hint=hint, global_average_pooling=True, strength=0.5)], x, t, ctx,
                 uncond_rows=[False, True], percent=0.0)
    for key in ("output", "middle"):
        for p, g in zip(plain[key], gap[key]):
            assert g.shape == p.shape
            torch.testing.assert_close(g[0], 0.5 * p[0].mean(dim=(1, 2), keepdim=True).expand_as(p[0]))
            assert g[1].abs().max() == 0  # the unconditional row gets nothing (ControlNet v1.1 README)
            assert p[0].std() > 0
