import json

import numpy as np
import pytest

from specmoe.errors import InputError
from specmoe.traces import importers, stats


def test_esft_import_matches_the_text_files(shared_data, esft_intent):
    tr = esft_intent
    assert tr.topk_ids.shape == (8222, 26, 6) and tr.num_experts == 64
    # First token of the first sequence at MoE layer 1 and layer 26, read straight from the text.
    folder = shared_data / "routing" / "deepseek-v2-lite-esft" / "intent"
    for layer in (1, 26):
        ids_txt, w_txt = (folder / f"expert_weights_{layer}.txt").read_text().split("\n")[0].split("\t\t")
        assert list(tr.topk_ids[0, layer - 1]) == [int(x) for x in ids_txt.split("\t")[:6]]
        assert np.allclose(tr.topk_weights[0, layer - 1], [float(x) for x in w_txt.split("\t")[:6]])
    assert tr.meta["first_moe_layer"] == 1
    # The data README: the busiest expert carries 2.9 to 4.7 times the mean load.
    imb = stats.imbalance(stats.expert_load(tr))
    assert 2.8 < imb.min() and imb.max() < 4.8


def _esft_dir(tmp_path, lines_by_layer):
    tmp_path.mkdir(parents=True)
    for layer, lines in lines_by_layer.items():
        (tmp_path / f"expert_weights_{layer}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_esft_bad_inputs(tmp_path):
    good = "1\t2\t3\t4\t5\t6\t\t.1\t.1\t.1\t.1\t.1\t.1"
    with pytest.raises(InputError, match="6 ids but 5 weights"):
        importers.import_esft(_esft_dir(tmp_path / "a", {1: ["1\t2\t3\t4\t5\t6\t\t.1\t.1\t.1\t.1\t.1"]}))
    with pytest.raises(InputError, match="not a multiple of top_k"):
        importers.import_esft(_esft_dir(tmp_path / "b", {1: ["1\t2\t3\t\t.1\t.1\t.1"]}))
    with pytest.raises(InputError, match="contiguous"):
        importers.import_esft(_esft_dir(tmp_path / "c", {1: [good], 3: [good]}))
    with pytest.raises(InputError, match="expert id 70"):
        importers.import_esft(_esft_dir(tmp_path / "d", {1: [good.replace("1\t2", "70\t2", 1)]}))
    with pytest.raises(InputError, match="lengths differ"):
        importers.import_esft(_esft_dir(tmp_path / "e", {1: [good], 2: [good, good]}))


def test_jsonl_round_trip(embedded_trace, tmp_path):
    tr = embedded_trace.select(embedded_trace.seq_id < 2)
    path = tmp_path / "r.jsonl"
    with open(path, "w") as f:
        for t in range(tr.num_tokens):
            for layer in range(tr.num_layers):
                f.write(json.dumps(dict(seq=int(tr.seq_id[t]), pos=int(tr.position[t]), layer=layer + 1,
                                        experts=tr.topk_ids[t, layer].tolist(),
                                        weights=tr.topk_weights[t, layer].tolist())) + "\n")
    back = importers.import_jsonl(path, num_experts=64)
    assert np.array_equal(back.topk_ids, tr.topk_ids)
    assert np.allclose(back.topk_weights, tr.topk_weights)
    assert back.meta["first_moe_layer"] == 1


@pytest.mark.parametrize("lines,match", [
    (['{"seq":0,"pos":0,"layer":0,"experts":[1]}', "{oops"], "line 2"),
    (['{"seq":0,"pos":0,"experts":[1]}'], "layer"),
    (['{"seq":0,"pos":0,"layer":0,"experts":[1]}', '{"seq":0,"pos":1,"layer":1,"experts":[1]}'], "no record"),
    (['{"seq":0,"pos":0,"layer":0,"experts":[1,2],"weights":[1]}'], "weights"),
])
def test_jsonl_bad_inputs(tmp_path, lines, match):
    p = tmp_path / "b.jsonl"
    p.write_text("\n".join(lines))
    with pytest.raises(InputError, match=match):
        importers.import_jsonl(p)


def test_sglang_per_token_and_stat_dumps(tmp_path):
    torch = pytest.importorskip("torch")
    # Layers 0-1 dense (all-zero rows, as the recorder leaves them), 2-4 MoE; two forward passes.
    g = torch.Generator().manual_seed(0)
    recs = []
    for fp, T in ((7, 3), (8, 5)):
        ids = torch.zeros(5, T, 4, dtype=torch.int32)
        ids[2:] = torch.stack([torch.randperm(16, generator=g)[:4] for _ in range(3 * T)]).view(3, T, 4)
        recs.append({"forward_pass_id": fp, "rank": 0, "topk_ids_of_layer": ids})
    torch.save({"records": recs, "last_physical_to_logical_map": torch.arange(16).repeat(5, 1)}, tmp_path / "pt.pt")
    tr = importers.import_sglang(tmp_path / "pt.pt", num_experts=16)
    assert tr.topk_ids.shape == (8, 3, 4) and tr.meta["first_moe_layer"] == 2
    assert np.array_equal(tr.topk_ids[:3], recs[0]["topk_ids_of_layer"][2:].permute(1, 0, 2).numpy())
    assert list(tr.seq_id) == [7] * 3 + [8] * 5
    counts = torch.zeros(5, 16, dtype=torch.int64)
    counts[1:, 3] = 9
    torch.save({"logical_count": counts}, tmp_path / "stat.pt")
    c = importers.import_sglang(tmp_path / "stat.pt")
    assert isinstance(c, importers.ExpertCounts) and c.logical_count.shape == (4, 16)
    assert stats.imbalance(c.logical_count)[0] == 16.0


def test_sglang_rejects_non_tensor_payloads(tmp_path):
    torch = pytest.importorskip("torch")

    class Evil:
        def __reduce__(self):
            return (print, ("should never run",))

    torch.save({"records": [Evil()]}, tmp_path / "evil.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(InputError, match="not a readable torch file"):
        importers.import_sglang(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputError):
        importers.import_sglang(tmp_path / "junk.pt")
