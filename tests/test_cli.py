import json
import subprocess
import sys


from specmoe.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_specs_list_and_show(capsys):
    code, out, _ = run(capsys, "specs", "list", "--json")
    assert code == 0 and "deepseek-v3" in json.loads(out)["model"]
    code, out, _ = run(capsys, "specs", "show", "h200", "--json")
    assert json.loads(out)["sources"]["bf16_TFLOPs"] == "measured"


def test_trace_import_then_stats_json(capsys, shared_data, tmp_path):
    out_path = tmp_path / "law.npz"
    code, _, _ = run(capsys, "trace", "import", "--format", "esft",
                     str(shared_data / "routing/deepseek-v2-lite-esft/law"), "-o", str(out_path))
    assert code == 0
    code, out, _ = run(capsys, "trace", "stats", str(out_path), "--json", "--plot", str(tmp_path / "p"))
    s = json.loads(out)
    assert code == 0 and len(s["layers"]) == 26
    assert all("imbalance" in l and "transition_entropy" in l for l in s["layers"])
    assert (tmp_path / "p" / "load.png").stat().st_size > 1000


def test_default_stats_run_on_the_embedded_trace(capsys):
    code, out, _ = run(capsys, "trace", "stats")
    assert code == 0 and "esft_intent_sample" in out and "mean imbalance" in out


def test_synth_command(capsys, tmp_path):
    code, out, _ = run(capsys, "trace", "synth", "-o", str(tmp_path / "s.npz"), "--sequences", "4",
                       "--seq-len", "8")
    assert code == 0 and (tmp_path / "s.npz").exists()


def test_bad_input_is_one_line_exit_2_and_no_output(capsys, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "expert_weights_1.txt").write_text("1\t2\t\t0.5\n")
    code, _, err = run(capsys, "trace", "import", "--format", "esft", str(bad), "-o", str(tmp_path / "o.npz"))
    assert code == 2 and err.count("\n") == 1 and "expert_weights_1.txt" in err
    assert not (tmp_path / "o.npz").exists() and not list(tmp_path.glob("*.tmp"))


def test_out_of_range_flag_and_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "specmoe.cli", "trace", "synth", "-o", str(tmp_path / "x.npz"),
                        "--sequences", "0"], capture_output=True, text=True)
    assert p.returncode == 2 and "positive integer" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "specmoe.cli", "trace", "stats", str(tmp_path / "nope.npz")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "nope.npz: no such file" in p.stderr and "Traceback" not in p.stderr
