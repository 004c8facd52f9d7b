"""The paper's training claims on the toy, from the committed bases with fixed seeds (slow: about 5 minutes of one
core). Thresholds come from measured runs (docs/training.md) with margin:
- sudden convergence (paper §3.3): shape IoU stays at chance for a plateau, then rises past 0.8. Measured (lr 3e-4,
  batch 32, base.safetensors of 12,000 steps): 0.203 at step 0, 0.205 at 100, 0.573 at 200, 0.764 at 300, 0.805 at
  400, 0.827 at 500, 0.857 at 600 (edge F1 0.43 -> 0.97), 0.916 at 2,000;
- the §4.2 ablation: ordinary (non-zero) initialisation is still near chance when the zero-initialised run has
  converged. Measured: at step 600 zero init 0.857, ordinary 0.209 (its step 0: 0.174, below the base alone's 0.203:
  it disturbs the base); ordinary starts rising only after 650 (0.306 at 800);
- prompt drop (paper §3.3) on the shape-class toy: see the section at the end.
"""
from __future__ import annotations

import pytest

from controlnet_core.toy import run as toy

pytestmark = pytest.mark.slow
STEPS = 600
EVERY = 50


@pytest.fixture(scope="module")
def ev():
    return toy.EvalSet.make()


@pytest.fixture(scope="module")
def zero_run(ev):
    return toy.advance(toy.start(toy.TOY_RECIPE, init="zero"), STEPS, eval_every=EVERY, ev=ev)


def iou_at(run, step: int) -> float:
    return dict(run.curve)[step]["iou"]


def test_plateau_then_sudden_convergence(zero_run):
    chance = iou_at(zero_run, 0)  # the base alone: the control is still exactly zero
    assert chance < 0.25
    assert iou_at(zero_run, PLATEAU) < chance + 0.05  # the plateau: samples unchanged while the zero convs grow
    assert iou_at(zero_run, STEPS) >= 0.8 and iou_at(zero_run, STEPS) > 3 * chance  # the goal
    assert dict(zero_run.curve)[STEPS]["edge_f1"] >= 0.9


def test_ordinary_init_is_still_near_chance_when_zero_init_has_converged(zero_run, ev):
    ordinary = toy.advance(toy.start(toy.TOY_RECIPE, init="ordinary"), CONVERGED, eval_every=CONVERGED, ev=ev)
    assert iou_at(zero_run, CONVERGED) >= 0.8
    assert iou_at(ordinary, CONVERGED) < iou_at(zero_run, 0) + 0.06


PLATEAU = 100
CONVERGED = STEPS


# ------------------------------------------------------------------------------------------------ prompt drop
# Paper §3.3: dropping 50 % of the prompts makes the ControlNet read the semantics of the hint itself. The shape-class
# toy (toy/shapes.py; base controlnet_core/toy/shapes_base.safetensors, remade by `python -m controlnet_core.toy.base
# --data shapes --out controlnet_core/toy/shapes_base.safetensors`) samples with the EMPTY prompt and reads the class
# of each sample (circle / bar / triangle) against the hint's. Measured (48 eval conditions, lr 3e-4, batch 32,
# seed 0, 400 steps): base alone, empty prompt: class accuracy 0.396, IoU 0.178 (prompted 0.50 / 0.231);
# prompt drop 0.5: 0.771 / 0.560 (prompted 0.875 / 0.658); prompt drop 0: 0.708 / 0.596 (prompted 0.854 / 0.695).
# So both follow the control with an empty prompt, and the drop changes the empty-prompt class accuracy by +0.06
# (3 of 48 samples; the standard error of one accuracy here is about 0.06): no measurable effect at this scale, as in
# research/training.md §4.4. The test asserts exactly that, with margin.
DROP_STEPS = 400


def empty_prompt_metrics(base, net, ev) -> dict[str, float]:
    from controlnet_core.toy.shapes import classify
    from controlnet_core.train.metrics import iou

    x = toy.sample(base, net, ev, prompted=False)
    mask = toy.segment(x)
    return {"acc": (classify(mask, ev.data) == ev.data.tokens[:, 0]).float().mean().item(),
            "iou": iou(mask, ev.data.mask).mean().item()}


def test_prompt_drop_and_the_empty_prompt_on_shape_classes():
    from controlnet_core.toy.model import SHAPES_BASE_PATH, load_base
    from controlnet_core.toy.shapes import shapes

    base = load_base(SHAPES_BASE_PATH)
    ev = toy.EvalSet.make(48, data=shapes)
    alone = empty_prompt_metrics(base, None, ev)
    trained = {}
    for drop in (0.5, 0.0):
        run = toy.advance(toy.start(toy.recipe(prompt_drop=drop), base=base, data=shapes), DROP_STEPS)
        trained[drop] = empty_prompt_metrics(base, run.trainer.controlnet, ev)
    assert alone["acc"] < 0.5  # near the 1/3 chance of three classes
    for m in trained.values():  # the control is followed with an empty prompt, with or without prompt drop
        assert m["acc"] >= alone["acc"] + 0.2 and m["iou"] >= 0.45
    assert abs(trained[0.5]["acc"] - trained[0.0]["acc"]) < 0.2  # no measurable effect of the drop here
    assert abs(trained[0.5]["iou"] - trained[0.0]["iou"]) < 0.15
