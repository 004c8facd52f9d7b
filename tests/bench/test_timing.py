"""The benchmark's run order and paired ratios (benchmarks/timing.py): pure functions, no timing asserted."""
import pytest

from benchmarks.timing import BASE, paired_ratios, schedule, summary


def test_schedule_puts_every_run_between_two_unet_runs():
    order = schedule(["unet", "k1", "k2", "k3"], repeats=3)
    assert order[0] == order[-1] == BASE
    assert order[1::2] == ["k1", "k2", "k3", "k2", "k3", "k1", "k3", "k1", "k2"]  # rotated each repeat
    assert all(c == BASE for c in order[0::2])


def test_paired_ratio_divides_by_the_mean_of_both_neighbours():
    runs = [("unet", 10.0), ("k1", 15.0), ("unet", 20.0), ("k2", 30.0), ("unet", 10.0)]
    ratios = paired_ratios(runs)
    assert ratios["k1"] == [1.0]  # 15 / mean(10, 20)
    assert ratios["k2"] == [2.0]  # 30 / mean(20, 10)
    assert ratios["unet"] == [1.0, 1.0, 1.0]


def test_drift_cancels_where_a_global_median_would_not():
    # the machine slows down linearly; k1 always costs 1.5x the U-Net at the same moment
    order = schedule(["unet", "k1"], repeats=3)
    load = [1.0 + 0.2 * i for i in range(len(order))]
    runs = [(c, (1.5 if c == "k1" else 1.0) * 10 * m) for c, m in zip(order, load)]
    s = summary(runs)
    assert s["k1"]["ratio"] == pytest.approx(1.5)
    assert s["k1"]["low"] == pytest.approx(1.5) and s["k1"]["high"] == pytest.approx(1.5)


def test_a_run_without_unet_neighbour_is_refused():
    with pytest.raises(ValueError, match="no U-Net-only neighbour"):
        paired_ratios([("k1", 1.0), ("k2", 1.0)])
