import json
from pathlib import Path

import numpy as np
import pytest

from specmoe.errors import InputError
from specmoe.simulator.calibration import from_dict, load_calibration
from specmoe.simulator.compute import ComputeModel, Efficiency
from specmoe.specs import load_gpu, load_model

from conftest import tiny_model

DATA = Path(__file__).parent / "data"


def test_roofline_closed_form_datasheet_gpu():
    m, gpu = load_model("mixtral-8x7b"), load_gpu("h100-sxm")
    cm = ComputeModel(m, gpu)
    eff = Efficiency()
    # one token through one expert: weight-bound, 3 * 4096 * 14336 bf16 weights + activations
    t = cm.ffn_us(np.array([[1.0]]), [14336])[0]
    nbytes = 2 * (3 * 4096 * 14336 + 2 * 4096 + 3 * 14336)
    assert t == pytest.approx(nbytes / (gpu.hbm_bandwidth * eff.memory) * 1e6 + eff.launch_us)
    # 8192 tokens: compute-bound
    t = cm.ffn_us(np.array([[8192.0]]), [14336])[0]
    assert t == pytest.approx(6 * 4096 * 14336 * 8192 / (gpu.bf16_flops * eff.flops) * 1e6 + eff.launch_us)
    assert "no calibration" in cm.notes[0]


def test_measured_gpu_figures_are_not_derated():
    cm = ComputeModel(load_model("mixtral-8x7b"), load_gpu("h200"))
    assert cm.bytes_per_s == 4190e9 and cm.flops_per_s == 772e12


def test_idle_experts_cost_nothing_and_widths_are_priced():
    cm = ComputeModel(tiny_model(hidden_size=1024), load_gpu("h100-sxm"))
    t = cm.ffn_us(np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0]]), [512, 2048])
    assert t[0] == 0.0 and 0 < t[1] < t[2]
    small = cm.ffn_us(np.array([[4.0]]), [512])[0]
    big = cm.ffn_us(np.array([[4.0]]), [2048])[0]
    launch = Efficiency().launch_us
    assert big - launch == pytest.approx(4 * (small - launch), rel=0.02)  # weight-bound: linear in width


def test_calibration_gemm_interpolates_inside_and_falls_back_outside():
    cal = load_calibration(DATA / "h200_calibration.json")
    m = load_model("mixtral-8x7b")
    cm = ComputeModel(m, load_gpu("h200"), cal)
    got = cm.gemm_us(np.array([16.0, 256.0, 640.0, 4096.0]), 14336, 4096)
    assert got[0] == pytest.approx(45.8) and got[1] == pytest.approx(64.5)
    assert got[2] == pytest.approx(64.5 + (198.7 - 64.5) * (640 - 256) / (1024 - 256))
    roof = ComputeModel(m, load_gpu("h200")).gemm_us(np.array([4096.0]), 14336, 4096)[0]
    assert got[3] == pytest.approx(roof)
    assert any("outside the calibration grid" in n for n in cm.notes)


def test_calibration_grouped_gemm_and_attention_grids():
    data = {"device": "test", "date": "2026-11-29", "versions": {}, "command": "synthetic grid for this test",
            "grouped_gemm": [{"tokens": t, "experts": e, "hidden": 64, "ffn": 128, "us": 10.0 + t + 5 * e}
                             for t in (8, 64) for e in (1, 4)],
            "attention": [{"batch": b, "context": c, "heads": 4, "kv_heads": 2, "head_dim": 16, "us": b + c / 100}
                          for b in (1, 32) for c in (100, 1000)]}
    cm = ComputeModel(tiny_model(), load_gpu("h100-sxm"), from_dict(data))
    # 20 tokens over 2 of 4 experts: bilinear in (tokens, experts) -> 10 + 20 + 10
    t = cm.ffn_us(np.array([[10.0, 10.0, 0.0, 0.0]]), [128])[0]
    assert t == pytest.approx(40.0)
    core = cm.attention_us(np.array([16.0]), 550, "decode") - cm.gemm_us(np.array([16.0]), -(-cm.model.attention.weight_elems(64) // 64), 64)
    assert core[0] == pytest.approx(16 + 5.5)


def test_calibrated_all_to_all_curve_used_by_analytic_tier():
    from specmoe.simulator.network import analytic_times
    from specmoe.simulator.topology import build_topology
    from specmoe.specs import load_cluster
    cal = load_calibration(DATA / "h200_calibration.json")
    topo = build_topology(load_cluster("h200x2-nvlink"))
    m = np.array([[0.0, 2**25], [2**25, 0.0]])  # 32 MiB to the peer: a measured point
    assert analytic_times(topo, m[None], calibration=cal)[0] == pytest.approx(170.1e-6)
    # the preset's own alpha-beta fit of the same measurements is close
    assert analytic_times(topo, m[None])[0] == pytest.approx(170.1e-6, rel=0.05)


@pytest.mark.parametrize("patch,field", [
    ({"device": 3}, "device"),
    ({"gemm": [{"m": 1, "n": 2, "k": "x", "us": 1}]}, "gemm[0].k"),
    ({"collectives": {"all_to_all": {"infiniband": [[1, 2], [3, 4]]}}}, "collectives.all_to_all.infiniband"),
    ({"collectives": {"broadcast": {}}}, "collectives.broadcast"),
    ({"extra": 1}, "extra"),
])
def test_calibration_schema_errors_name_the_field(patch, field):
    data = json.loads((DATA / "h200_calibration.json").read_text())
    data.update(patch)
    with pytest.raises(InputError) as e:
        from_dict(data, "cal.json")
    assert e.value.field == field
