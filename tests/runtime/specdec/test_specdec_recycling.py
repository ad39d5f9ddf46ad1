"""Token Recycling's pure parts, tree templates, traces and the CLI's input errors."""
import json
import os

import numpy as np
import pytest

from specmoe.cli import main
from specmoe.errors import InputError
from specmoe.runtime.specdec import recycling
from specmoe.runtime.specdec.traces import acceptance_trace, write_json
from specmoe.runtime.specdec.tree import (
    TreeTemplate,
    best_first,
    chain,
    constant_branching,
    default_template,
    load_tree,
)


def test_build_draft_is_a_bfs_fill_of_the_template():
    # root -> (1: rank 0, 2: rank 1); 1 -> (3: rank 0); 3 -> (4: rank 0)
    tree = TreeTemplate((-1, 0, 0, 1, 3))
    adj = recycling.new_adjacency(10, 2)
    adj[7] = [3, 5]
    adj[3] = [9, 1]
    adj[9] = [4, 4]
    assert recycling.build_draft(adj, 7, tree).tolist() == [7, 3, 5, 9, 4]


def test_update_and_walk():
    tree = TreeTemplate((-1, 0, 0, 1, 1))
    tokens = np.array([7, 3, 5, 9, 8])
    adj = recycling.new_adjacency(10, 2)
    recycling.update_adjacency(adj, tokens, np.arange(10).reshape(5, 2))
    assert adj[7].tolist() == [0, 1] and adj[8].tolist() == [8, 9]
    # target after root says 3 (node 1), after node 1 says 8 (node 4), after node 4 says 2: bonus
    assert recycling.walk_tree(tree, tokens, np.array([3, 8, 0, 0, 2])) == ([1, 4], 2)
    assert recycling.walk_tree(tree, tokens, np.array([6, 8, 0, 0, 2])) == ([], 6)


def test_template_shapes():
    t = default_template()
    assert t.size == 81 and t.max_branch <= 8
    assert all(p < i for i, p in enumerate(t.parents) if i)
    assert all(t.depth[c] == t.depth[i] + 1 for i in range(t.size) for c in t.children[i])
    c = constant_branching([4, 2, 1])
    assert c.size == 1 + 4 + 8 + 8 and c.max_branch == 4
    assert chain(3).parents == (-1, 0, 1, 2)
    b = best_first(10, [0.6, 0.2])
    assert b.size == 11
    # siblings stay in rank order and a level's nodes are contiguous
    for kids in b.children:
        assert list(kids) == sorted(kids)


def test_load_tree_errors(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"version": 1, "parents": [-1, 0, 2]}))
    with pytest.raises(InputError, match=r"parents\[2\]"):
        load_tree(f)
    f.write_text(json.dumps({"version": 2, "parents": [-1]}))
    with pytest.raises(InputError, match="version"):
        load_tree(f)
    f.write_text("{")
    with pytest.raises(InputError, match="JSON"):
        load_tree(f)
    f.write_text(json.dumps({"version": 1, "method": "x", "parents": [-1, 0, 0, 1]}))
    assert load_tree(f).parents == (-1, 0, 0, 1)


def test_acceptance_trace_format(tmp_path):
    steps = [{"parents": [-1, 0, 0, 1], "accepted": [1, 3]}, {"parents": [-1, 0, 0, 1], "accepted": []}]
    t = acceptance_trace("m", "recycling", 0.0, steps)
    write_json(t, tmp_path / "a.json", compact=True)
    back = json.loads((tmp_path / "a.json").read_text())
    assert back == {"version": 1, "model": "m", "method": "recycling", "temperature": 0.0, "steps": steps}


def test_cli_bad_inputs_exit_2(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question_id": 1, "turns": "oops"}\n')
    assert main(["generate", "--method", "ar", "--prompts", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "q.jsonl" in err and "turns" in err and "Traceback" not in err
    tree = tmp_path / "t.json"
    tree.write_text(json.dumps({"version": 1, "parents": [0]}))
    assert main(["generate", "--method", "recycling", "--tree", str(tree), "--prompts", str(bad)]) == 2
    assert "t.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--method", "beam", "--prompts", str(bad)])
    monkeypatch.setenv("SPECMOE_KERNELS", "cuda")
    assert main(["generate", "--method", "ar", "--prompts", str(bad)]) == 2
    assert "SPECMOE_KERNELS" in capsys.readouterr().err
    monkeypatch.delenv("SPECMOE_KERNELS")
    assert main(["generate", "--method", "ar", "--kernels", "torch", "--precision", "bf16", "--prompts", str(bad)]) == 2
    assert "--precision" in capsys.readouterr().err
    if os.environ.get("TRITON_INTERPRET") != "1":
        assert main(["generate", "--method", "ar", "--kernels", "triton", "--prompts", str(bad)]) == 2
        assert "--kernels" in capsys.readouterr().err


def test_device_step_ops_equal_the_numpy_reference():
    """fill_draft_ / update_adjacency_ / walk_tree_ (what the CUDA graph runs) against
    build_draft / update_adjacency / walk_tree, on random trees with a small vocabulary, so that
    repeated tokens, equal siblings and duplicate adjacency rows all occur."""
    import torch

    from tests.runtime.specdec.specdec_helpers import random_recycling_case
    rng = np.random.default_rng(0)
    for trial in range(200):
        c = random_recycling_case(rng, 24)
        recycling.fill_draft_(c.tok, c.adj_t, c.dt)
        assert c.tok.tolist() == c.want.tolist()
        accepted, bonus = recycling.walk_tree(c.tree, c.want, c.choice)
        n_acc, path, b = recycling.walk_tree_(c.tok, torch.as_tensor(c.choice), c.dt)
        assert int(n_acc) == len(accepted) + 1 and int(b) == bonus
        assert path[: int(n_acc)].tolist() == [0] + accepted
        recycling.update_adjacency(c.adj, c.want, c.topk)
        recycling.update_adjacency_(c.adj_t, c.tok, torch.as_tensor(c.topk), c.dt)
        assert (c.adj_t[:-1].numpy() == c.adj).all(), trial
