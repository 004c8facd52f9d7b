"""The paper's training claims on the toy, from the committed base with fixed seeds (slow: about 3 minutes of one
core). Thresholds come from measured runs (docs/training.md) with margin:
- sudden convergence (paper §3.3): shape IoU stays at chance for a plateau, then rises. Measured (lr 3e-4, batch
  32): 0.153 at step 0, 0.148 at 100, 0.169 at 150, 0.41 at 200, 0.65 at 500; edge F1 0.34 -> 0.81. The issue's
  goal of IoU >= 0.8 is NOT reached with this base (its samples are blurred in colour, which caps the prompt-free
  segmentation); the test asserts what was measured, with margin;
- the §4.2 ablation: ordinary (non-zero) initialisation is still near chance when the zero-initialised run has
  converged. Measured: at step 350 zero init 0.635, ordinary 0.215 (chance 0.153); ordinary starts rising later
  (0.29 at 450, 0.35 at 500), so on this toy it delays convergence rather than preventing it.
"""
from __future__ import annotations

import pytest

from controlnet_core.toy import run as toy

pytestmark = pytest.mark.slow
STEPS = 500
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
    assert iou_at(zero_run, STEPS) >= 0.55 and iou_at(zero_run, STEPS) > 3 * chance
    assert dict(zero_run.curve)[STEPS]["edge_f1"] >= 0.7


def test_ordinary_init_is_still_near_chance_when_zero_init_has_converged(zero_run, ev):
    ordinary = toy.advance(toy.start(toy.TOY_RECIPE, init="ordinary"), CONVERGED, eval_every=CONVERGED, ev=ev)
    assert iou_at(zero_run, CONVERGED) >= 0.55
    assert iou_at(ordinary, CONVERGED) < iou_at(zero_run, 0) + 0.12


PLATEAU = 100
CONVERGED = 350
