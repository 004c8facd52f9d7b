"""Union controls in the ResidualEngine: one forward for several types, cached fuser, auto, errors."""
from __future__ import annotations

import pytest
import torch

from controlnet_core.engine import Control, ResidualEngine, union_groups
from controlnet_core.errors import ControlNetError
from controlnet_core.union import load_union
from tests.core.test_union import union_file

H = W = 8


@pytest.fixture(scope="module")
def net():
    return load_union(union_file(8)).eval()


@pytest.fixture(scope="module")
def net6():
    return load_union(union_file(6)).eval()


def step_inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, H, W, generator=g), torch.tensor([500.0] * batch),
            torch.randn(batch, 7, 2048, generator=g), torch.randn(batch, 2816, generator=g))


def hint(seed):
    return torch.rand(1, 3, 8 * H, 8 * W, generator=torch.Generator().manual_seed(seed))


def flat(res):
    return [*res["output"], *res["middle"]]


def close(a, b, tol=1e-5):
    for p, q in zip(flat(a), flat(b)):
        assert ((p - q).abs().max() / q.abs().max()).item() <= tol


def count_forwards(net):
    calls = []
    handle = net.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_one_typed_control_is_the_single_type_reference(net):
    x, t, c, y = step_inputs()
    h = hint(1)
    out = ResidualEngine()([Control(net, h, strength=0.6, union_type=3)], x, t, c, y, uncond_rows=None, percent=0.0)
    with torch.no_grad():
        want = net.union_forward(x, [h.expand(2, -1, -1, -1)], [3], t, c, y, scales=[0.6])
    close(out, want)


def test_two_types_same_net_run_as_one_forward(net):
    x, t, c, y = step_inputs()
    h1, h2 = hint(1), hint(2)
    controls = [Control(net, h1, strength=0.7, union_type=1), Control(net, h2, strength=1.2, union_type=3)]
    assert len(union_groups(controls)) == 1
    calls, handle = count_forwards(net)
    try:
        out = ResidualEngine()(controls, x, t, c, y, uncond_rows=None, percent=0.0)
    finally:
        handle.remove()
    assert len(calls) == 1
    with torch.no_grad():
        want = net.union_forward(x, [h1.expand(2, -1, -1, -1), h2.expand(2, -1, -1, -1)], [1, 3], t, c, y,
                                 scales=[0.7, 1.2])
    close(out, want)


def test_different_windows_or_nets_are_separate_passes(net, net6):
    h1, h2 = hint(1), hint(2)
    a = Control(net, h1, union_type=1, end_percent=0.5)
    b = Control(net, h2, union_type=3)
    assert len(union_groups([a, b])) == 2
    assert len(union_groups([Control(net, h1, union_type=1), Control(net6, h2, union_type=3)])) == 2
    assert len(union_groups([Control(net, h1), Control(net, h2)])) == 2  # auto never groups


def test_auto_is_the_plain_hint_with_the_zero_type_vector(net):
    x, t, c, y = step_inputs()
    h = hint(4)
    out = ResidualEngine()([Control(net, h)], x, t, c, y, uncond_rows=None, percent=0.0)
    with torch.no_grad():
        want = net(x, h, t, c, y, extra_emb=net.type_embedding([]))
    close(out, want)


def test_fuser_runs_once_per_hint_not_per_step(net):
    x, t, c, y = step_inputs()
    control = Control(net, hint(5), union_type=0)
    calls = []
    handle = net.spatial_ch_projs.register_forward_hook(lambda *a: calls.append(1))
    try:
        for step in range(3):
            ResidualEngine()([control], x + step, t, c, y, uncond_rows=None, percent=0.1 * step)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_cond_only_rows_match_the_full_batch(net):
    """uncond multiplier 0: the group runs on the cond rows only; a one-image hint makes that exact."""
    from controlnet_core.weights import ControlWeights

    x, t, c, y = step_inputs()
    w0 = ControlWeights(uncond_multiplier=0.0)
    controls = [Control(net, hint(1), union_type=1, weights=w0), Control(net, hint(2), union_type=2, weights=w0)]
    out = ResidualEngine()(controls, x, t, c, y, uncond_rows=[False, True], percent=0.0)
    with torch.no_grad():
        want = net.union_forward(x[:1], [hint(1), hint(2)], [1, 2], t[:1], c[:1], y[:1], scales=[1.0, 1.0])
    for p, q in zip(flat(out), flat(want)):
        torch.testing.assert_close(p[:1], q, rtol=1e-5, atol=1e-6)
        assert p[1].abs().max() == 0


def test_type_the_file_lacks_is_refused(net6):
    with pytest.raises(ControlNetError, match="ProMax"):
        Control(net6, hint(1), union_type=6)
