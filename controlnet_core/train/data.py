"""Training data: the fill50k layout (`prompt.json` JSON Lines with `source`, `target`, `prompt`;
lllyasviel/ControlNet tutorial_dataset.py) and paired folders (`target/x.png` + `hint/x.png` + optional `x.txt`).
Hints come from the files, or are made on the fly from the targets by one of our preprocessors. Prompts are encoded
once (one call per distinct prompt) and cached."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Pair:
    target: Path
    hint: Path | None
    prompt: str


def read_fill50k(root: Path | str) -> list[Pair]:
    """`root/prompt.json` lines {"source": "source/1.png", "target": "target/1.png", "prompt": "..."}."""
    root = Path(root)
    index = root / "prompt.json"
    if not index.is_file():
        raise FileNotFoundError(f"{root}: no prompt.json; a fill50k-layout folder has prompt.json (JSON Lines with "
                                "source, target, prompt) next to source/ and target/")
    pairs = []
    for n, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"source", "target", "prompt"} - row.keys()
        if missing:
            raise ValueError(f"{index}:{n}: missing {sorted(missing)}; each line needs source, target, prompt")
        pairs.append(Pair(root / row["target"], root / row["source"], row["prompt"]))
    return pairs


def read_paired_folders(root: Path | str, *, hints: bool = True) -> list[Pair]:
    """`root/target/<name>.<ext>`, `root/hint/<name>.<ext>` (when `hints`), prompt from `root/target/<name>.txt`."""
    root = Path(root)
    targets = sorted(p for p in (root / "target").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not targets:
        raise FileNotFoundError(f"{root}: no images in {root / 'target'}; a paired folder has target/ (and hint/ "
                                "with the same file names unless hints are made by a preprocessor)")
    pairs = []
    for t in targets:
        hint = None
        if hints:
            found = [h for h in (root / "hint").glob(t.stem + ".*") if h.suffix.lower() in IMAGE_SUFFIXES]
            if not found:
                raise FileNotFoundError(f"{t}: no hint/{t.stem}.* next to it; add it or make hints with a "
                                        "preprocessor (hint_preprocessor='canny')")
            hint = found[0]
        txt = t.with_suffix(".txt")
        pairs.append(Pair(t, hint, txt.read_text().strip() if txt.is_file() else ""))
    return pairs


def load_rgb(path: Path, size: int) -> Tensor:
    """Image file -> (3, size, size) float in [0, 1] (resized with Lanczos when needed)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.LANCZOS)
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


class PromptCache:
    """Encodes each distinct prompt once: `encode(list[str]) -> (N, T, D)`."""

    def __init__(self, encode: Callable[[list[str]], Tensor]):
        self.encode, self.cache = encode, {}

    def __call__(self, prompts: list[str]) -> Tensor:
        new = sorted({p for p in prompts if p not in self.cache})
        if new:
            with torch.no_grad():
                for p, e in zip(new, self.encode(new)):
                    self.cache[p] = e
        return torch.stack([self.cache[p] for p in prompts])  # (B, T, D)


class PairedDataset:
    """Pairs -> (target in [-1, 1] (3, S, S), hint in [0, 1] (3, S, S), prompt); hints from files or
    `preprocessor` (a controlnet_core.preprocess name, run on the target)."""

    def __init__(self, pairs: list[Pair], size: int, *, preprocessor: str | None = None, **options):
        self.pairs, self.size, self.preprocessor, self.options = pairs, size, preprocessor, options

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, str]:
        pair = self.pairs[i]
        target = load_rgb(pair.target, self.size)  # (3, S, S) in [0, 1]
        if self.preprocessor:
            from .. import preprocess

            hint = preprocess.run(self.preprocessor, target.permute(1, 2, 0)[None], **self.options)[0]
            hint = hint.permute(2, 0, 1)  # (3, S, S)
        elif pair.hint is not None:
            hint = load_rgb(pair.hint, self.size)
        else:
            raise ValueError(f"{pair.target}: no hint file and no preprocessor")
        return target * 2 - 1, hint, pair.prompt

    def batch(self, indices: list[int]) -> tuple[Tensor, Tensor, list[str]]:
        items = [self[i] for i in indices]
        return torch.stack([t for t, _, _ in items]), torch.stack([h for _, h, _ in items]), [p for _, _, p in items]
