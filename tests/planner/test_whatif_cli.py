import json

import pytest
import yaml

from specmoe.cli import main

SMALL = ["--models", "deepseek-v2-lite", "--clusters", "h200x2-nvlink", "--placements", "contiguous",
         "speculative", "--tree-budgets", "0", "4", "--jobs", "1", "--rate-min", "1", "--rate-max", "256"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    import contextlib
    import io
    out = io.StringIO()
    folder = tmp_path_factory.mktemp("wi")
    with contextlib.redirect_stdout(out):
        assert main(["whatif", *SMALL, "--json", "--report", str(folder / "r")]) == 0
    return json.loads(out.getvalue()), folder / "r", out.getvalue()


def test_json_keys_ranking_and_pareto(small_run):
    out, _, _ = small_run
    cands = out["candidates"]
    assert len(cands) == 4
    for c in cands:
        assert {"max_rate_rps", "goodput_per_gpu", "pareto", "ep", "placement", "tree_budget"} <= set(c)
    rates = [c["goodput_per_gpu"] for c in cands]
    assert rates == sorted(rates, reverse=True)
    assert out["best"] == cands[0] and cands[0]["pareto"]
    # the bisection's last passing probe is the reported rate; a failing probe lies above it
    for c in cands:
        passing = [r for r, ok in c["probes"] if ok]
        failing = [r for r, ok in c["probes"] if not ok]
        assert c["max_rate_rps"] == max(passing)
        assert all(f > c["max_rate_rps"] for f in failing)


def test_report_folder_has_plots_and_a_loadable_plan(small_run):
    from specmoe.planner import plan as planfile
    out, folder, _ = small_run
    for name in ("report.md", "pareto.png", "latency_cdf.png", "layers.png", "a2a_share.png"):
        assert (folder / name).stat().st_size > 500, name
    p = planfile.load(folder / "best_plan.json")
    assert p.model == out["best"]["model"] and p.ep == out["best"]["ep"]
    sglang = json.loads((folder / "best_plan.sglang.json").read_text())
    assert planfile.check_export(sglang, "sglang", p.ep, p.num_experts) is None


def test_same_seed_same_result(small_run):
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["whatif", *SMALL, "--json"])
    again = json.loads(out.getvalue())
    first = small_run[0]
    first.pop("report", None)
    assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)


def test_yaml_config_and_bad_input(capsys, tmp_path):
    cfg = tmp_path / "w.yaml"
    cfg.write_text(yaml.safe_dump({"models": ["deepseek-v2-lite"], "clusters": ["nope"]}))
    assert main(["whatif", "--config", str(cfg)]) == 2
    assert "nope" in capsys.readouterr().err
    cfg.write_text(yaml.safe_dump({"models": ["deepseek-v2-lite"], "attention": ["sp"]}))
    assert main(["whatif", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "w.yaml: attention" in err and err.count("\n") == 1
    cfg.write_text("models: [oops")
    assert main(["whatif", "--config", str(cfg)]) == 2
    with pytest.raises(SystemExit) as e:
        main(["whatif", "--jobs", "0"])
    assert e.value.code == 2


def test_a_model_that_does_not_fit_is_reported_infeasible(capsys):
    # deepseek-v3 in bf16 is 1.3 TB: it cannot fit on two H200s
    assert main(["whatif", "--models", "deepseek-v3", "--clusters", "h200x2-nvlink", "--placements",
                 "contiguous", "--tree-budgets", "0", "--jobs", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["candidates"]
    assert row["feasible"] is False and row["max_rate_rps"] == 0.0 and not row["pareto"]
    assert "GiB per GPU" in row["notes"][0] and out["best"] is None
