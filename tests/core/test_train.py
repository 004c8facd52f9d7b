"""The training recipe on the toy (random-weight tiny base, fixed seeds): the paper's zero-convolution invariants
(§3.1-3.2), what is frozen, checkpointing, resume, export; each in well under a second of CPU."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmarks.train_bench import saved_activation_bytes
from controlnet_core.formats import load_controlnet
from controlnet_core.toy import run as toy
from controlnet_core.toy.model import build_base
from controlnet_core.train.export import save_trained, training_metadata

SMALL = toy.recipe(batch_size=4, lr=1e-3)


@pytest.fixture(scope="module")
def base():
    b = build_base(seed=5)  # random but meaningful-sized weights; no dependence on the committed file
    for m in (b.unet, b.text):
        m.requires_grad_(False).eval()
    return b


def zero_conv_names(net) -> set[str]:
    return {n for n, _ in net.named_parameters() if n.startswith(("zero_convs.", "middle_block_out."))}


def test_at_init_the_controlled_base_equals_the_base_exactly(base):
    ev = toy.EvalSet.make(8)
    plain = toy.sample(base, None, ev)
    controlled = toy.sample(base, toy.make_controlnet(base), ev)
    assert torch.equal(plain, controlled)
    ordinary = toy.sample(base, toy.make_controlnet(base, "ordinary"), ev)
    assert (ordinary - plain).abs().max() > 0.05  # the §4.2 ablation does disturb the base at step 0


def test_at_step_one_only_the_zero_convs_get_gradients(base):
    run = toy.start(SMALL, base=base)
    run.trainer.loss(toy.to_batch(run.stream.next(), base)).backward()
    net = run.trainer.controlnet
    grads = {n: (p.grad.abs().max().item() if p.grad is not None else 0.0) for n, p in net.named_parameters()}
    zeros = zero_conv_names(net)
    assert all(grads[n] > 0 for n in zeros if n.endswith("weight"))
    assert all(v == 0.0 for n, v in grads.items() if n not in zeros), \
        {n: v for n, v in grads.items() if n not in zeros and v}
    assert all(p.grad is None for p in base.unet.parameters())  # the base is frozen


def test_after_one_step_the_gradient_reaches_the_encoder_copy(base):
    run = toy.start(SMALL, base=base)
    toy.advance(run, 1)
    run.trainer.loss(toy.to_batch(run.stream.next(), base)).backward()
    net = run.trainer.controlnet
    assert net.input_blocks[1][0].in_layers[2].weight.grad.abs().max() > 0  # step 2: the copy wakes up
    assert net.input_hint_block[-1].weight.grad.abs().max() > 0


def test_locked_encoder_records_no_autograd_graph(base):
    """cldm.py runs the locked encoder under no_grad; here nothing in it requires a gradient, so no graph is kept."""
    run = toy.start(SMALL, base=base)
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad)) for b in base.unet.input_blocks]
    run.trainer.loss(toy.to_batch(run.stream.next(), base))
    for h in hooks:
        h.remove()
    assert seen and not any(seen)


def test_unlocked_decoder_is_trained_and_encoder_stays_frozen(base):
    b = build_base(seed=5)
    run = toy.start(dataclasses.replace(SMALL, sd_locked=False), base=b)
    before = {k: v.clone() for k, v in b.unet.state_dict().items()}
    toy.advance(run, 2)
    after = b.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("output_blocks.", "out.")) for k in changed)


def test_mid_only_then_reconnect(base):
    run = toy.start(dataclasses.replace(SMALL, only_mid_control=True, reconnect_at=2), base=base)
    toy.advance(run, 2)
    net = run.trainer.controlnet
    assert all(c[0].weight.abs().max() == 0 for c in net.zero_convs)  # skips unconnected: no gradient
    assert net.middle_block_out[0].weight.abs().max() > 0
    assert run.trainer.connected()
    toy.advance(run, 1)
    assert all(c[0].weight.abs().max() > 0 for c in net.zero_convs)


def test_gradient_checkpointing_gives_the_same_gradients(base):
    def grads(checkpointing: bool):
        # ordinary init: every part of the copy gets a gradient at once (Adam would magnify rounding after a step)
        run = toy.start(dataclasses.replace(SMALL, gradient_checkpointing=checkpointing), base=base, init="ordinary")
        run.trainer.loss(toy.to_batch(run.stream.next(), base)).backward()
        return [p.grad.clone() for p in run.trainer.controlnet.parameters()]

    plain, checkpointed = grads(False), grads(True)
    assert all(g.abs().max() > 0 for g in plain)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_saves_fewer_activations_for_backward(base):
    """What checkpointing is for: the tensors autograd keeps between forward and backward (the toy: 6.2 MB without,
    1.75 MB with; SD1.5 at 256², benchmarks/train_bench.py: 439 vs 58 MiB)."""
    batch = toy.to_batch(toy.start(SMALL, base=base).stream.next(), base)
    saved, losses = {}, {}
    for checkpointing in (False, True):
        trainer = toy.start(dataclasses.replace(SMALL, gradient_checkpointing=checkpointing), base=base).trainer
        params = [*trainer.unet.parameters(), *trainer.controlnet.parameters()]
        saved[checkpointing], losses[checkpointing] = saved_activation_bytes(lambda: trainer.loss(batch), params)
    assert saved[False] > 1_000_000
    assert saved[True] <= 0.4 * saved[False]
    torch.testing.assert_close(losses[True], losses[False], rtol=0, atol=0)


def test_bf16_autocast_keeps_fp32_master_weights_and_tracks_fp32(base):
    runs = {}
    for cast in (None, "bf16"):
        runs[cast] = toy.advance(toy.start(dataclasses.replace(SMALL, autocast=cast), base=base), 2)
    net = runs["bf16"].trainer.controlnet
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert net.middle_block_out[0].weight.abs().max() > 0  # updates reach the fp32 masters
    first = runs[None].trainer.losses[0]
    assert abs(runs["bf16"].trainer.losses[0] - first) < 0.02 * first  # same loss to bf16 rounding


def test_ema_follows_the_weights(base):
    run = toy.advance(toy.start(dataclasses.replace(SMALL, ema_decay=0.5), base=base), 2)
    w = run.trainer.controlnet.middle_block_out[0].weight
    e = run.trainer.controlnet_weights(ema=True)["middle_block_out.0.weight"]
    assert 0 < e.abs().max() < w.abs().max()


@pytest.mark.parametrize("changes", [{}, {"ema_decay": 0.9, "grad_accumulation": 2}])
def test_resume_equals_an_uninterrupted_run(base, tmp_path, changes):
    config = dataclasses.replace(SMALL, **changes)
    straight = toy.advance(toy.start(config, base=base), 4)
    first = toy.advance(toy.start(config, base=base), 2)
    first.trainer.save(tmp_path / "ck.pt", extra={"data": first.stream.state_dict()})
    second = toy.start(dataclasses.replace(config, seed=99), base=base)  # a different seed: resume must win
    second.stream.load_state_dict(second.trainer.resume(tmp_path / "ck.pt")["data"])
    toy.advance(second, 2)
    a, b = straight.trainer.state_dict(), second.trainer.state_dict()
    assert a["step"] == b["step"] == 4 and a["losses"] == b["losses"]
    for k in a["controlnet"]:
        assert torch.equal(a["controlnet"][k], b["controlnet"][k]), k
    if "ema" in a:
        assert all(torch.equal(x, y) for x, y in zip(a["ema"], b["ema"]))


def test_saved_file_loads_in_our_loader_with_its_training_config(base, tmp_path):
    run = toy.advance(toy.start(SMALL, base=base), 2)
    path = tmp_path / "toy_controlnet.safetensors"
    config = run.trainer.controlnet.config
    save_trained(run.trainer.controlnet_weights(), path,
                 training_metadata(SMALL, run.trainer.step, norm_groups=config.norm_groups))
    loaded = load_controlnet(path)  # strict: every key and shape checked
    # hint widths are derived from the keys; GroupNorm groups cannot be (the toy's 8 travel in the metadata)
    assert loaded.config == dataclasses.replace(config, norm_groups=32)
    ours = run.trainer.controlnet.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in loaded.state_dict().items())
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["controlnet_core.steps"] == "2" and '"lr": 0.001' in meta["controlnet_core.train_config"]
    assert meta["controlnet_core.norm_groups"] == "8"


def test_sd_layout_training_round_trips_through_ldm_and_diffusers_files(tmp_path):
    """A small SD-architecture U-Net (cldm.py hint encoder, 8x latent): train 2 steps, write both layouts, reload."""
    from controlnet_core.controlnet import create_controlnet_from_unet
    from controlnet_core.train.recipe import Batch, TrainConfig, Trainer
    from controlnet_core.unet import ControlledUNet, UNetConfig

    torch.manual_seed(0)
    unet = ControlledUNet(UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                     transformer_depth=(1, 1), context_dim=64, num_heads=2))
    net = create_controlnet_from_unet(unet.state_dict())
    config = TrainConfig(batch_size=2, lr=1e-3)
    trainer = Trainer(unet, net, config, torch.zeros(1, 5, 64))
    g = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, 64, 64, generator=g),
                  torch.randn(2, 5, 64, generator=g))
    for _ in range(2):
        trainer.train_step([batch])
    weights = trainer.controlnet_weights()
    assert weights["zero_convs.0.0.weight"].abs().max() > 0
    meta = training_metadata(config, trainer.step)
    ldm = save_trained(weights, tmp_path / "cn.safetensors", meta)[0]
    diffusers = save_trained(weights, tmp_path / "cn_diffusers", meta, layout="diffusers", net_config=net.config)[0]
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
    with torch.no_grad():
        ref = net.eval()(x, batch.hint[:1], t, batch.context[:1])
        for path in (ldm, diffusers.parent):
            got = load_controlnet(path)(x, batch.hint[:1], t, batch.context[:1])
            for a, b in zip(ref["output"] + ref["middle"], got["output"] + got["middle"]):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
