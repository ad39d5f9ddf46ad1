"""Plan reading and the CLI's one-line errors (exit 2, no traceback)."""
import json

import pytest

from specmoe.cli import main
from specmoe.errors import InputError
from specmoe.runtime.plans import load_run_plan


def _plan(tmp_path, **over):
    d = {"version": 1, "model": "deepseek-v2-lite", "parallel": {"ep": 2, "attention": "dp"},
         "placement": {"physical_to_logical_map": [list(range(64))] * 26},
         "token_schedule": {"policy": "dp-request"}}
    d.update(over)
    p = tmp_path / "plan-x.json"
    p.write_text(json.dumps(d))
    return p


def test_reads_plan(tmp_path):
    p = load_run_plan(_plan(tmp_path))
    assert (p.name, p.ep, p.policy, p.phy2log.shape) == ("x", 2, "dp-request", (26, 64))


@pytest.mark.parametrize("over, field", [
    ({"parallel": {"ep": 0}}, "parallel.ep"),
    ({"placement": {}}, "placement.physical_to_logical_map"),
    ({"placement": {"physical_to_logical_map": [[0, 1, 2]]}}, "placement.physical_to_logical_map"),
])
def test_bad_plan_names_field(tmp_path, over, field):
    with pytest.raises(InputError, match=field.replace(".", r"\.")):
        load_run_plan(_plan(tmp_path, **over))


def test_cli_bad_plan_exits_2_with_one_line(tmp_path, capsys):
    bad = _plan(tmp_path, parallel={"ep": "two"})
    assert main(["validate", str(bad), "--trace", "x.npz", "-o", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parallel.ep" in err[0] and "plan-x.json" in err[0]
    assert not (tmp_path / "m.json").exists()


def test_cli_report_rejects_non_measured_json(tmp_path, capsys):
    f = tmp_path / "m.json"
    f.write_text("{}")
    assert main(["validate", "--report", str(f)]) == 2
    assert "kind" in capsys.readouterr().err


def test_calibrate_without_gpu_is_a_one_line_error(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert main(["calibrate", "-o", str(tmp_path / "c.json")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
