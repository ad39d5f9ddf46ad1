"""The benchmark's per-group tables pool tokens and seconds per group (not a mean of ratios)."""
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")     # the benchmark module imports the engine


def _bench():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_specdec.py"
    spec = importlib.util.spec_from_file_location("bench_specdec", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_group_summaries_pool_each_group():
    # per_prompt rows: [prompt tokens, new tokens, steps, decode seconds]
    ar = [[10, 100, 100, 1.0], [10, 8, 8, 0.1], [10, 100, 100, 2.0]]
    rec = [[10, 100, 25, 0.25], [10, 8, 4, 0.08], [10, 100, 50, 1.0]]
    details = {"max_new": 100, "categories": ["qa", "qa", "rag"], "decode_only": {
        "ar/ar/T0/100": {"per_prompt": ar}, "recycling/t/T0/100": {"per_prompt": rec},
        "ar/ar/T0/8": {"per_prompt": ar}, "rsd/x/T0/8": {"per_prompt": rec}}}   # other lengths: left out
    g = _bench().group_summaries(details)
    qa = g["decode_by_category"]["recycling/t/T0"]["qa"]
    assert qa["prompts"] == 2
    assert qa["tokens_per_s"] == pytest.approx(108 / 0.33, abs=0.05)
    assert qa["mean_accepted"] == pytest.approx(108 / 29, abs=1e-3)
    assert qa["speedup_vs_ar"] == pytest.approx((108 / 0.33) / (108 / 1.1), abs=1e-3)
    assert set(g["decode_by_category"]) == {"recycling/t/T0"}
    by_len = g["decode_by_length_T0"]["recycling/t/T0"]
    assert by_len["ran to max_new"]["prompts"] == 2 and by_len["ended before max_new"]["prompts"] == 1
    assert by_len["ended before max_new"]["speedup_vs_ar"] == pytest.approx(1.25, abs=1e-3)


def test_summarize_rejects_old_or_broken_details(tmp_path):
    bench = _bench()
    old = tmp_path / "old.json"      # session 5's per_prompt rows had 3 entries and no categories
    old.write_text('{"max_new": 8, "decode_only": {"ar/ar/T0": {"per_prompt": [[1, 2, 0.1]]}}}')
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    for f in (old, broken, tmp_path / "missing.json"):
        with pytest.raises(SystemExit) as e:
            bench.read_details(str(f))
        assert e.value.code == 2
