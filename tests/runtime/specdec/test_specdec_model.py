"""Our GGUF reader + plain-torch Llama against transformers' own GGUF loading (the oracle)."""
import numpy as np
import pytest
import torch
from tests.runtime.specdec.specdec_helpers import one_thread, real_model

from specmoe.errors import InputError
from specmoe.runtime.specdec.engine import Decoder
from specmoe.runtime.specdec.gguf_load import read_gguf
from specmoe.runtime.specdec.prompts import encode_chat

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea."]
NEW = 12


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def hf_model():
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF
    from transformers import AutoModelForCausalLM
    _, _, path = real_model()
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)


def test_greedy_matches_transformers(hf_model):
    """Our greedy tokens = transformers' argmax at every position of the same sequence
    (teacher-forced, one HF forward): by induction that is transformers' greedy output."""
    m, tok, _ = real_model()
    dec = Decoder(m, 160)
    for text in PROMPTS:
        ids = encode_chat(tok, text)
        ours = dec.generate(ids, "ar", NEW).tokens
        assert len(ours) >= 6
        with torch.no_grad():
            logits = hf_model(torch.tensor([ids + ours])).logits[0, len(ids) - 1: -1]
        assert logits.argmax(-1).tolist() == ours
    hf = hf_model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)[0, len(ids):]
    assert hf.tolist() == ours[:4]  # and transformers' own generate agrees on a short run


def test_logits_close_to_transformers(hf_model):
    m, tok, _ = real_model()
    ids = encode_chat(tok, PROMPTS[0])
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([ids])).logits[0, -1], -1)
    dec2 = Decoder(m, 80)
    from specmoe.runtime.specdec.tree import chain
    dec2.prefill(ids)  # the last prompt token goes through a one-token step
    st = dec2._step_setup(chain(0))
    st["tok"][0] = ids[-1]
    ours = torch.log_softmax(dec2.verify_runner(st)()[0][0], -1)
    assert (ours - ref).abs().max().item() < 2e-3


def test_gguf_loader_rejects_bad_files(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(InputError, match="x.gguf"):
        read_gguf(bad)
    with pytest.raises(InputError, match="not found"):
        read_gguf(tmp_path / "missing.gguf")


def test_gguf_config_is_smollm2():
    m, _, _ = real_model()
    c = m.cfg
    assert (c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.vocab_size) == (30, 576, 9, 3, 49152)
    assert c.tied_embeddings and c.rope_base == 100000.0
    assert np.isfinite(m.embed.sum().item())


def test_generate_command_end_to_end(tmp_path, shared_data, capsys):
    """`specmoe generate` on the real model and Spec-Bench prompts: warm-up, AR and Token
    Recycling on one decoder, the printed table, the results rows and planner-readable traces."""
    import json

    from specmoe.cli import main
    from specmoe.planner.acceptance import load_trace
    questions = shared_data / "prompts" / "spec-bench" / "question.jsonl"
    out = tmp_path / "rows.json"
    assert main(["generate", "--method", "recycling", "--prompts", str(questions), "--num-prompts", "1",
                 "--warm-prompts", "1", "--max-new-tokens", "6", "--results", str(out),
                 "--trace-dir", str(tmp_path / "tr")]) == 0
    printed = capsys.readouterr().out
    assert "tok/s" in printed and "recycling" in printed
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["ar", "recycling"] and rows[0]["speedup_vs_ar"] == 1.0
    for r in rows:
        assert set(r) == {"method", "tree", "temperature", "tokens_per_s", "mean_accepted", "speedup_vs_ar"}
        assert r["tokens_per_s"] > 0 and r["mean_accepted"] >= 1.0
    assert rows[0]["mean_accepted"] == 1.0
    trace = load_trace(tmp_path / "tr" / "acceptance_recycling_T0.json")
    assert trace.steps and all(len(parents) == 81 for parents, _ in trace.steps)
