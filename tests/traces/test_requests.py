import json

import numpy as np
import pytest

from specmoe.errors import InputError
from specmoe.traces import requests


def test_embedded_azure_matches_the_csv(shared_data):
    csv = requests.load_azure_csv(shared_data / "requests/azure-llm-2023/AzureLLMInferenceTrace_conv.csv")
    emb = requests.load_requests("azure-conv")
    assert len(emb) == len(csv) == 19366
    assert np.array_equal(emb.input_tokens, csv.input_tokens)
    assert emb.arrival_s[0] == 0 and np.all(np.diff(emb.arrival_s) >= 0)
    assert 3400 < emb.arrival_s[-1] < 3600  # one hour


def test_azure_csv_errors(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,10\n")
    with pytest.raises(InputError, match="GeneratedTokens: missing column"):
        requests.load_azure_csv(p)
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,5\n")
    with pytest.raises(InputError, match="TIMESTAMP: unparseable"):
        requests.load_azure_csv(p)
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,-3,5\n")
    with pytest.raises(InputError, match="ContextTokens"):
        requests.load_azure_csv(p)


def test_mooncake_jsonl(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(json.dumps(dict(timestamp=t, input_length=100 + t, output_length=7))
                           for t in (2000, 0, 1000)))
    tr = requests.load_mooncake_jsonl(p)
    assert list(tr.arrival_s) == [0.0, 1.0, 2.0] and list(tr.input_tokens) == [100, 1100, 2100]
    p.write_text(json.dumps(dict(timestamp=-5, input_length=1, output_length=1)))
    with pytest.raises(InputError, match="negative time"):
        requests.load_mooncake_jsonl(p)
    p.write_text(json.dumps(dict(timestamp=5, input_length=1)))
    with pytest.raises(InputError, match="output_length: required"):
        requests.load_mooncake_jsonl(p)


@pytest.mark.parametrize("process", ["poisson", "gamma"])
def test_synthetic_arrivals_have_the_asked_rate_and_means(process):
    tr = requests.synthetic(20.0, 2000.0, 800, 200, process=process, cv=2.0, seed=1)
    assert len(tr) / 2000.0 == pytest.approx(20.0, rel=0.05)
    assert tr.input_tokens.mean() == pytest.approx(800, rel=0.05)
    gaps = np.diff(tr.arrival_s)
    cv = gaps.std() / gaps.mean()
    assert cv == pytest.approx(1.0 if process == "poisson" else 2.0, rel=0.1)
    again = requests.synthetic(20.0, 2000.0, 800, 200, process=process, cv=2.0, seed=1)
    assert np.array_equal(tr.arrival_s, again.arrival_s)


def test_rate_scaling():
    tr = requests.load_requests("azure-code").window(600)
    fast = tr.scaled_to_rate(50.0)
    assert (len(fast) - 1) / fast.arrival_s[-1] == pytest.approx(50.0)
