"""The shape-class toy (controlnet_core/toy/shapes.py): geometry, outlines, prompts and the class read-out, on
ground truth (milliseconds)."""
from __future__ import annotations

import torch

from controlnet_core.toy import run as toy
from controlnet_core.toy.data import NULL_TOKEN
from controlnet_core.toy.shapes import SHAPES, classify, prompt_text, shapes


def test_ground_truth_masks_are_classified_as_their_class():
    batch = shapes(600, torch.Generator().manual_seed(0))
    assert (classify(batch.mask, batch) == batch.tokens[:, 0]).all()
    counts = torch.bincount(batch.tokens[:, 0], minlength=len(SHAPES))
    assert counts.min() > 150  # the three classes are drawn evenly


def test_the_three_classes_differ_where_they_stand():
    batch = shapes(200, torch.Generator().manual_seed(1))
    cand = batch.candidates()  # (n, 3, S, S)
    inter = (cand[:, :, None] & cand[:, None]).flatten(3).sum(3).float()
    union = (cand[:, :, None] | cand[:, None]).flatten(3).sum(3).float()
    off = ~torch.eye(len(SHAPES), dtype=torch.bool)
    assert (inter / union)[:, off].max() < 0.85  # distinguishable at every size and position


def test_shapes_are_inside_the_image_and_the_hint_is_their_outline():
    batch = shapes(300, torch.Generator().manual_seed(2))
    m = batch.mask
    assert not (m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())
    outline = batch.hint[:, 0] > 0.5
    assert outline.any(dim=(1, 2)).all()
    assert ((outline & ~m).flatten(1).sum(1) > 0).all()  # outside edge pixels
    assert torch.equal(batch.target[:, :, 0, 0], batch.target[:1, :, 0, 0].expand(300, 3))  # black background


def test_prompts_name_colour_and_shape_and_the_stream_draws_shapes():
    batch = shapes(4, torch.Generator().manual_seed(3))
    assert all(p.split()[1] in SHAPES for p in batch.prompts())
    assert prompt_text(NULL_TOKEN, NULL_TOKEN) == ""
    stream = toy.CircleStream(5, 0, shapes)
    assert stream.next().geometry.shape == (5, 4)
    assert toy.EvalSet.make(6, data=shapes).data.geometry.shape == (6, 4)
