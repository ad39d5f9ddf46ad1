"""Report arithmetic: the held-out split, the offset fit and the error figures."""
import numpy as np

from specmoe.runtime.report import build_report, fit_offset, split_batches


def test_split_alternates_sorted_batches():
    cal, held = split_batches([512, 1, 2, 4, 8, 2])
    assert cal == {1, 4, 512} and held == {2, 8}


def test_split_always_calibrates_the_largest_so_held_out_interpolates():
    cal, held = split_batches([1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512])
    assert cal == {1, 4, 16, 64, 256, 512} and held == {2, 8, 32, 128, 384}
    cal, held = split_batches([1, 2, 4, 8])
    assert cal == {1, 4, 8} and held == {2}
    assert all(min(cal) < b < max(cal) for b in held)


def test_fit_offset_recovers_a_constant_overhead():
    sim = np.array([100.0, 200.0, 400.0])
    assert abs(fit_offset(sim, sim + 50.0) - 50.0) < 1e-9


def _rows(meas_of):
    rows = []
    for b in (1, 2, 4, 8, 16):
        sim = 100.0 * b
        rows.append({"case": f"c{b}", "plan": "contiguous", "ep": 2, "mode": "nvlink", "batch": b,
                     "simulated": {"step_us": sim, "moe_layer_us": sim / 10},
                     "measured": {"step_us": meas_of(sim), "moe_layer_us": meas_of(sim) / 10},
                     "phases": {}})
    return rows


def test_errors_are_computed_on_held_out_cases_only():
    # calibration batches 1, 4, 16 fit offset 30 exactly; held-out 2, 8 are off by +10 us and -20 us
    meas = {100.0: 130.0, 400.0: 430.0, 1600.0: 1630.0, 200.0: 240.0, 800.0: 810.0}
    rep = build_report(_rows(lambda s: meas[s]), "t")
    step = rep["by_figure"]["step_us"]
    errs = sorted([abs(230 - 240) / 240, abs(830 - 810) / 810])
    assert step["n"] == 2
    assert np.isclose(step["median_abs_rel_error"], np.median(errs))
    assert np.isclose(rep["fits"]["nvlink-ep2/step_us"]["offset_us"], 30.0)
    assert {r["split"] for r in rep["rows"] if r["batch"] in (2, 8)} == {"held_out"}
