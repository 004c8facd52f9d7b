"""Run order and cost ratios shared by both sides of `make bench` (plain Python: the host side imports it too).

Every configuration's run sits between two U-Net-only runs (A B A ...), and its cost ratio is its time over the
mean of those two neighbours, so load from other processes that drifts over tens of seconds cancels instead of
landing on one configuration. The configurations rotate each repeat, so none always follows the same run.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence

BASE = "unet"


def schedule(configs: Sequence[str], repeats: int) -> list[str]:
    """The whole run order: U, then per repeat each configuration followed by U (rotated by one each repeat)."""
    others = [c for c in configs if c != BASE]
    order = [BASE]
    for r in range(repeats):
        k = r % len(others) if others else 0
        for config in others[k:] + others[:k]:
            order += [config, BASE]
    return order


def paired_ratios(runs: Sequence[tuple[str, float]]) -> dict[str, list[float]]:
    """{config: [its time / mean of the U-Net-only runs just before and after it]} from (config, seconds) in run
    order; the U-Net-only runs themselves get 1.0."""
    out: dict[str, list[float]] = {BASE: []}
    for i, (config, seconds) in enumerate(runs):
        if config == BASE:
            out[BASE].append(1.0)
            continue
        around = [s for c, s in (runs[i - 1] if i > 0 else ("", 0.0), runs[i + 1] if i + 1 < len(runs) else ("", 0.0))
                  if c == BASE]
        if not around:
            raise ValueError(f"run {i} ({config}) has no U-Net-only neighbour: use schedule() for the run order")
        out.setdefault(config, []).append(seconds / statistics.fmean(around))
    return out


def summary(runs: Sequence[tuple[str, float]]) -> dict[str, dict[str, float]]:
    """Per configuration: median seconds per run, and the median, lowest and highest paired ratio."""
    seconds: dict[str, list[float]] = {}
    for config, s in runs:
        seconds.setdefault(config, []).append(s)
    return {config: {"seconds": statistics.median(seconds[config]), "ratio": statistics.median(ratios),
                     "low": min(ratios), "high": max(ratios)}
            for config, ratios in paired_ratios(runs).items()}
