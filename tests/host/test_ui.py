"""What the editor shows (issue 12), on the real host: the Preprocessor's hint preview (bounded for video), its
LATENT target size, Apply's preview of the hint as the network sees it. Browser-side checks: tests/browser/."""
from __future__ import annotations

import numpy as np
from PIL import Image

from tests.host.assets import HINT_IMAGE
from tests.host.graphs import Graph, apply, base, core_loader, sample


def _previews(server, entry: dict, node_id: str) -> list[np.ndarray]:
    items = entry["outputs"][node_id]["images"]
    assert all(item["type"] == "temp" for item in items)
    return [np.asarray(Image.open(server.base / "temp" / item["subfolder"] / item["filename"])) for item in items]


def test_preprocessor_previews_at_most_eight_frames_of_a_video(server):
    g = Graph()
    image = g.add("LoadImage", image=HINT_IMAGE)
    frames = g.add("RepeatImageBatch", image=g.out(image), amount=20)
    pre = g.add("CNCore_Preprocessor", image=g.out(frames), preprocessor="canny")
    entry = server.run(g.prompt())  # no other output node: the Preprocessor runs on its own
    shown = _previews(server, entry, pre)
    assert len(shown) == 8
    assert all(p.shape == (64, 64, 3) for p in shown) and len({p.tobytes() for p in shown}) == 1


def test_latent_input_sets_the_hint_size(server):
    g = Graph()
    image = g.add("LoadImage", image=HINT_IMAGE)
    latent = g.add("EmptyLatentImage", width=128, height=96, batch_size=1)
    pre = g.add("CNCore_Preprocessor", image=g.out(image), preprocessor="canny", latent=g.out(latent),
                pixel_perfect=True, resize_mode="Resize and Fill")
    shown = _previews(server, server.run(g.prompt()), pre)
    assert [p.shape for p in shown] == [(96, 128, 3)]
    assert not shown[0][:, :16].any() and not shown[0][:, -16:].any()  # fitted 96x96, black (border) bars


def test_apply_previews_the_hint_after_the_resize_mode(server):
    b = base()
    wide = b.graph.add("EmptyLatentImage", width=128, height=64, batch_size=1)
    pos, neg = apply(b, "CNCore_ApplyControlNet", core_loader(b), b.positive, b.negative,
                     resize_mode="Resize and Fill", preview_latent=b.graph.out(wide))
    sample(b, pos, neg, "apply_preview")
    apply_id = next(k for k, v in b.graph.nodes.items() if v["class_type"] == "CNCore_ApplyControlNet")
    entry = server.run(b.graph.prompt())
    shown = _previews(server, entry, apply_id)
    assert [p.shape for p in shown] == [(64, 128, 3)]
    hint = np.asarray(Image.open(server.base / "input" / HINT_IMAGE).convert("RGB"))
    border = np.concatenate([hint[0], hint[-1], hint[:, 0], hint[:, -1]])
    colour = np.median(border, axis=0)  # bars: the border's median colour (PNG rounding: within one level)
    assert np.abs(shown[0][:, :32].astype(int) - colour).max() <= 1
