import json

import numpy as np
import pytest

from specmoe.cli import main
from specmoe.errors import InputError
from specmoe.planner import plan as planfile
from specmoe.planner.placement import contiguous
from specmoe.planner.synthetic import planted_trace
from specmoe.traces.routing import save


def _plan(R=0):
    p = contiguous(3, 8, 4, R)
    return planfile.Plan(model="m", cluster="c", ep=4, attention="tp", phy2log=p,
                         num_redundant_experts=R, num_experts=8, method="test",
                         predicted={"x": 1.5}, provenance={"seed": 0})


def test_round_trip(tmp_path):
    path = tmp_path / "p.json"
    planfile.save(_plan(4), path)
    back = planfile.load(path)
    assert np.array_equal(back.phy2log, _plan(4).phy2log)
    assert back.to_json() == _plan(4).to_json()
    planfile.save(back, tmp_path / "q.json")
    assert (tmp_path / "q.json").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("edit,field", [
    (lambda d: d.pop("parallel"), "parallel"),
    (lambda d: d["parallel"].update(ep=3), "placement.physical_to_logical_map"),
    (lambda d: d["parallel"].update(attention="sp"), "parallel.attention"),
    (lambda d: d["placement"]["physical_to_logical_map"][1].__setitem__(0, 1),
     "placement.physical_to_logical_map"),
    (lambda d: d["placement"].update(num_redundant_experts=2), "placement.num_redundant_experts"),
    (lambda d: d["placement"].update(physical_to_logical_map=[[0, 1], [2]]),
     "placement.physical_to_logical_map"),
    (lambda d: d.update(version=9), "version"),
    (lambda d: d["token_schedule"].update(policy="magic"), "token_schedule.policy"),
    (lambda d: d.update(draft_tree={"parents": [-1, 1]}), "draft_tree.parents"),
])
def test_bad_plans_name_the_field(tmp_path, edit, field):
    d = _plan().to_json()
    edit(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(InputError) as e:
        planfile.load(path)
    assert e.value.field == field and str(path) in str(e.value)


def test_not_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        planfile.load(path)


def test_exports_follow_the_rules():
    p = _plan(4)
    s = planfile.to_sglang(p)
    assert np.asarray(s["physical_to_logical_map"]).shape == (3, 12)
    assert planfile.check_export(s, "sglang", 4, 8) is None
    v = planfile.to_vllm(p)
    assert planfile.check_export(v, "vllm", 4, 8) is None
    m = np.asarray(v["expert_map"])
    # contiguous with 4 redundant: rank 0 holds slots 0..2 = experts 0, 1, 2
    assert m[0, 0, :3].tolist() == [0, 1, 2] and (m[0, 0, 3:] == -1).all()
    v["expert_map"][0][0][0] = 2  # a corrupted map is caught
    assert planfile.check_export(v, "vllm", 4, 8) is not None
    s["physical_to_logical_map"][0] = [0] * 12
    assert "no slot" in planfile.check_export(s, "sglang", 4, 8)


def _trace(tmp_path):
    tr = planted_trace(8, 16, 26, 64, 6, 8, seed=1)
    tr.meta["model"] = "deepseek-v2-lite"
    path = tmp_path / "t.npz"
    save(tr, path)
    return path


def test_cli_plan_is_deterministic_and_loadable(tmp_path, capsys):
    trace = _trace(tmp_path)
    outs = []
    for name in ("a.json", "b.json"):
        rc = main(["plan", "--model", "deepseek-v2-lite", "--cluster", "dgx-h100", "--routing",
                   str(trace), "--profile-frac", "0.5", "--json", "--export", "vllm",
                   "-o", str(tmp_path / name)])
        assert rc == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    for k in ("remote_copies_per_token_layer", "local_activation_rate", "load_imbalance",
              "predicted_moe_layer_us"):
        assert k in outs[0] and k in outs[0]["baseline_contiguous"] and k in outs[0]["baseline_eplb"]
    p = planfile.load(tmp_path / "a.json")
    assert p.phy2log.shape == (26, 64)
    assert planfile.check_export(json.loads((tmp_path / "a.vllm.json").read_text()), "vllm", 8, 64) is None
    from specmoe.simulator.dispatch import check_phy2log
    from specmoe.specs import load_model
    check_phy2log(p.phy2log, load_model("deepseek-v2-lite"), 8)  # plans load in the simulator
    assert main(["plan", "show", str(tmp_path / "a.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_physical_experts"] == 64


def test_cli_bad_input_exits_2(tmp_path, capsys):
    trace = _trace(tmp_path)
    rc = main(["plan", "--model", "deepseek-v2-lite", "--cluster", "dgx-h100", "--routing",
               str(trace), "--redundant", "3", "-o", str(tmp_path / "x.json")])
    assert rc == 2 and "--redundant" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    rc = main(["plan", "--model", "mixtral-8x7b", "--cluster", "dgx-h100", "--routing",
               str(trace), "-o", str(tmp_path / "x.json")])
    assert rc == 2 and "num_experts" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[]")
    assert main(["plan", "show", str(tmp_path / "bad.json")]) == 2
