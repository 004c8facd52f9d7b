"""The paper's properties (Zhang & Agrawala, ICCV 2023, §3.1-3.2), on tiny real modules.

(a) A ControlNet created from a U-Net (trainable copy + zero convs) leaves the U-Net's output bit-identical.
(b) At initialisation the zero convs receive non-zero weight gradients while nothing upstream of them does
    (the gradient through a zero conv to its input is zero); one update later, gradients reach the copy.
(c) Several controls superpose: the decoder sees skip + sum of the residuals (y_c = F(x) + sum_i Z(...)).
"""
from __future__ import annotations

import pytest
import torch

from controlnet_core.controlnet import ControlNet, ControlNetConfig, create_controlnet_from_unet
from controlnet_core.unet import ControlledUNet, UNetConfig
from tests.fixtures import random_controlnet_state_dict, random_unet_state_dict

ENCODER_PARTS = ("time_embed", "label_emb", "input_blocks", "middle_block")


def tiny_unet(name: str, seed: int = 7) -> tuple[ControlledUNet, dict[str, torch.Tensor]]:
    sd = random_unet_state_dict(name, seed)
    unet = ControlledUNet(UNetConfig.from_state_dict(sd))
    unet.load_state_dict(sd, strict=True)
    return unet, sd


def step_inputs(cfg, batch: int = 2, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    hint = torch.rand(batch, 3, 8 * size, 8 * size, generator=g)
    t = torch.tensor([20.0, 800.0][:batch])
    ctx = torch.randn(batch, 6, cfg.context_dim, generator=g)
    y = torch.randn(batch, cfg.adm_in_channels, generator=g) if cfg.adm_in_channels else None
    return x, hint, t, ctx, y


@pytest.mark.parametrize("name", ["tiny-sd15", "tiny-sdxl"])
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_trainable_copy_leaves_unet_output_bit_identical(name, prefix):
    unet, sd = tiny_unet(name)
    net = create_controlnet_from_unet({prefix + k: v for k, v in sd.items()})
    own = net.state_dict()
    copied = [k for k in own if k.split(".", 1)[0] in ENCODER_PARTS]
    assert copied and all(torch.equal(own[k], sd[k]) for k in copied)
    new = [k for k in own if k.startswith(("zero_convs", "middle_block_out", "input_hint_block.14"))]
    assert len(new) == 2 * (len(net.zero_convs) + 2) and all(not own[k].any() for k in new)
    assert all(own[f"input_hint_block.{i}.weight"].any() for i in range(0, 13, 2))  # default init, not zero

    x, hint, t, ctx, y = step_inputs(net.config)
    with torch.no_grad():
        control = net(x, hint, t, ctx, y)
        assert all(not r.any() for r in control["output"] + control["middle"])
        assert torch.equal(unet(x, t, ctx, y, control=control), unet(x, t, ctx, y))


def test_zero_convs_get_gradients_and_shield_the_copy():
    unet, sd = tiny_unet("tiny-sd15")
    unet.requires_grad_(False)  # locked U-Net (paper §3.2)
    net = create_controlnet_from_unet(sd)
    x, hint, t, ctx, _ = step_inputs(net.config)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))

    def backward() -> None:
        net.zero_grad(set_to_none=True)
        loss = (unet(x, t, ctx, control=net(x, hint, t, ctx)) - target).square().mean()
        loss.backward()

    backward()
    zero_conv_params = [*net.zero_convs.parameters(), *net.middle_block_out.parameters()]
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in zero_conv_params)
    shielded = [*net.input_blocks.parameters(), *net.middle_block.parameters(), *net.time_embed.parameters(),
                *net.input_hint_block.parameters()]
    assert all(p.grad is None or not p.grad.any() for p in shielded)

    with torch.no_grad():  # one SGD step on the zero convs: now gradients flow into the trainable copy
        for p in zero_conv_params:
            p -= 1e-2 * p.grad
    backward()
    assert net.input_blocks[1][0].in_layers[2].weight.grad.abs().max() > 0
    assert net.input_hint_block[14].weight.grad.abs().max() > 0  # the hint's zero conv starts to learn
    assert not net.input_hint_block[0].weight.grad.any()  # still shielded by that (still zero) conv


def test_two_controls_superpose():
    unet, _ = tiny_unet("tiny-sd15")
    nets = []
    for seed in (11, 12):
        sd = random_controlnet_state_dict("tiny-sd15", seed)  # random, non-zero zero convs
        net = ControlNet(ControlNetConfig.from_state_dict(sd))
        net.load_state_dict(sd, strict=True)
        nets.append(net.eval())
    x, hint, t, ctx, _ = step_inputs(nets[0].config)
    with torch.no_grad():
        r1, r2 = (n(x, hint.flip(-1) if i else hint, t, ctx) for i, n in enumerate(nets))
        both = {k: [a + b for a, b in zip(r1[k], r2[k])] for k in ("output", "middle")}

        seen = []  # the skip half of every decoder input
        hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0])) for b in unet.output_blocks]
        mid = []
        hooks.append(unet.middle_block.register_forward_hook(lambda m, a, o: mid.append(o)))
        plain = unet(x, t, ctx)
        plain_in, plain_mid, seen[:], mid[:] = list(seen), mid[0], [], []
        out = unet(x, t, ctx, control=both)
        for h in hooks:
            h.remove()

    n = len(unet.output_blocks)
    for k, (got, ref) in enumerate(zip(seen, plain_in)):
        i = n - 1 - k  # decoder block k consumes skip i, deepest first
        c = r1["output"][i].shape[1]
        assert torch.equal(got[:, -c:], ref[:, -c:] + (r1["output"][i] + r2["output"][i]))
    first = seen[0][:, :-r1["output"][-1].shape[1]]  # the middle block's output, after its residual
    assert torch.equal(first, plain_mid + (r1["middle"][0] + r2["middle"][0]))
    assert not torch.equal(out, plain)
