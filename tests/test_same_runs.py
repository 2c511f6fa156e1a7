"""benchmarks/same_runs.py, the check that this checkout trains the runs a git revision trained: its comparison of two
runs' scalars, on scalars with known differences (the whole tool trains twelve short runs: run by hand, as the README
says)."""

import importlib.util

from conftest import ROOT

spec = importlib.util.spec_from_file_location("same_runs", ROOT / "benchmarks" / "same_runs.py")
same_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(same_runs)


def test_a_value_that_differs_by_one_bit_is_a_difference_and_a_step_on_one_side_is_listed():
    rev = {"losses/td_loss": {100: [0.5], 200: [0.25]}, "charts/SPS": {100: [90.0]}, "representation/srank": {100: [3.0]}}
    tree = {"losses/td_loss": {100: [0.5], 200: [0.25]}, "charts/SPS": {100: [95.0]}, "representation/srank": {100: [3.0]}}
    tree["representation/srank"][300] = [4.0]
    rev["charts/episodic_return"], tree["charts/episodic_return"] = {100: [1.0, 2.0]}, {100: [1.0, 2.0]}  # two games end
    assert same_runs.compare(rev, tree) == (
        5,  # SPS, a wall-clock tag, is not compared
        [],
        ["steps [300] only in the working tree's run, of 1 tags (representation/srank, ...)"],
    )
    tree["losses/td_loss"][200] = [0.25000003]  # the next float32 after 0.25
    tree["charts/episodic_return"][100] = [1.0, 3.0]  # the second game of a step
    assert same_runs.compare(rev, tree)[1] == [
        "charts/episodic_return at step 100: [1.0, 2.0] at REV, [1.0, 3.0] now",
        "losses/td_loss at step 200: [0.25] at REV, [0.25000003] now",
    ]
    del tree["losses/td_loss"]
    assert same_runs.compare(rev, tree)[1][-1] == "losses/td_loss only at REV"
