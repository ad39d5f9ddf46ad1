import torch

from specmoe.kernels import _common


def test_lookup_picks_nearest_bucket(monkeypatch):
    table = {"devices": {"cpu": {"moe_gate_up": {"E8_H64_F96": {"1": {"BLOCK_M": 16}, "64": {"BLOCK_M": 32},
                                                                "256": {"BLOCK_M": 64}}}}}}
    monkeypatch.setattr(_common, "_load_configs", lambda: table)
    cpu = torch.device("cpu")
    assert _common.lookup("moe_gate_up", cpu, "E8_H64_F96", 1, {})["BLOCK_M"] == 16
    assert _common.lookup("moe_gate_up", cpu, "E8_H64_F96", 40, {})["BLOCK_M"] == 32   # log2: 5.3 nearer 6
    assert _common.lookup("moe_gate_up", cpu, "E8_H64_F96", 200, {})["BLOCK_M"] == 64
    assert _common.lookup("moe_gate_up", cpu, "other", 8, {"BLOCK_M": 7}) == {"BLOCK_M": 7}


def test_shipped_configs_are_well_formed():
    """Every stored config names the meta-parameters its wrapper reads."""
    need = {"tree_attention": {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "num_splits"},
            "moe_gate_up": {"BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages"},
            "moe_down": {"BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages"}}
    # one config per shape, no token-count buckets (batch invariance: never chosen by M)
    flat = {"fused_linear": {"BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT", "num_warps", "num_stages"},
            "path_attention": {"BLOCK_N", "CHUNK", "QB"}}
    devices = _common._load_configs()["devices"]
    assert devices
    for kernels in devices.values():
        for kernel, shapes in kernels.items():
            if kernel in flat:
                assert all(set(cfg) == flat[kernel] for cfg in shapes.values()), kernel
                for key in shapes if kernel == "fused_linear" else ():   # "N,K" or "N,K,bf16"
                    nk = key.removesuffix(",bf16").split(",")
                    assert len(nk) == 2 and all(int(v) > 0 for v in nk), key
                continue
            for buckets in shapes.values():
                for key, cfg in buckets.items():
                    assert int(key) > 0 and set(cfg) - {"tma"} == need[kernel], (kernel, key, cfg)
        for key in kernels.get("moe_gate_up", {}):                  # one alignment for both GEMMs
            for m, cfg in kernels["moe_gate_up"][key].items():
                assert kernels["moe_down"][key][m]["BLOCK_M"] == cfg["BLOCK_M"]


def test_buffers_are_poisoned_in_tests():
    """The conftest's poisoning is active, so the kernel tests would see unwritten elements."""
    assert torch.isnan(_common.empty((3,), torch.float32, "cpu")).all()
    assert (_common.empty((3,), torch.int8, "cpu") == -128).all()
    assert (_common.empty((3,), torch.int32, "cpu") == _common.INT_POISON).all()


def test_host_helpers_match_triton():
    """The wrappers' host-side cdiv / next_pow2 (cheaper than triton's jit-wrapped ones) agree."""
    import triton
    for n in range(0, 2100):
        assert _common.next_pow2(n) == triton.next_power_of_2(n)
        for b in (1, 3, 16, 64, 1000):
            assert _common.cdiv(n, b) == triton.cdiv(n, b)


def test_fused_linear_configs_are_keyed_by_weight_dtype(monkeypatch):
    """bf16 weights get their own tuned tiles ("N,K,bf16"), fp32 weights the "N,K" ones."""
    from specmoe.kernels import dense
    name = "NVIDIA H100 80GB HBM3"
    table = _common._load_configs()["devices"][name]["fused_linear"]
    monkeypatch.setattr(_common, "device_name", lambda device: name)
    cpu = torch.device("cpu")
    assert dense.config(960, 576, cpu) == table["960,576"]
    assert dense.config(960, 576, cpu, torch.bfloat16) == table["960,576,bf16"] != table["960,576"]
