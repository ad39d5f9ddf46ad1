import dataclasses

import pytest
import yaml

from specmoe import specs
from specmoe.errors import InputError


@pytest.mark.parametrize("kind", list(specs.KINDS))
def test_every_preset_loads_and_round_trips(kind, tmp_path):
    for name in specs.list_presets(kind):
        spec = specs.load(kind, name)
        assert spec.name == name
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(specs.to_dict(spec)))
        assert specs.load(kind, str(path)) == spec


# Published totals (parameters, billions): DeepSeek-V3 671/37, Mixtral-8x7B 46.7/12.9,
# Mixtral-8x22B 141/39, Qwen3-235B-A22B 235/22, Qwen3-30B-A3B 30.5/3.3, OLMoE 6.9/1.3,
# DeepSeek-V2-Lite 15.7 total.
@pytest.mark.parametrize("name,total,active", [
    ("deepseek-v3", 671, 37.4), ("mixtral-8x7b", 46.7, 12.9), ("mixtral-8x22b", 141, 39.2),
    ("qwen3-235b-a22b", 235, 22.1), ("qwen3-30b-a3b", 30.5, 3.3), ("olmoe-1b-7b", 6.9, 1.3),
    ("deepseek-v2-lite", 15.7, None),
])
def test_model_presets_match_published_parameter_counts(name, total, active):
    m = specs.load_model(name)
    assert m.total_params() / 1e9 == pytest.approx(total, rel=0.02)
    if active:
        assert m.active_params() / 1e9 == pytest.approx(active, rel=0.03)


def test_derived_fields():
    m = specs.load_model("deepseek-v3")
    assert m.num_moe_layers == 58
    # MLA caches the 512-dim latent plus the 64-dim rope key per layer.
    assert m.kv_bytes_per_token() == 61 * (512 + 64) * 2
    mix = specs.load_model("mixtral-8x7b")
    assert mix.kv_bytes_per_token() == 32 * 2 * 8 * 128 * 2
    assert mix.expert_weight_bytes() == 3 * 4096 * 14336 * 2
    c = specs.load_cluster("32x8-h100-ib400")
    assert c.num_gpus == 256 and c.nic.bandwidth == 50e9


def test_h200_figures_come_from_the_measurement(shared_data):
    import json
    measured = json.loads((shared_data / "measured" / "h200.json").read_text())
    gpu = specs.load_gpu("h200")
    assert gpu.hbm_bandwidth_GBps == measured["hbm_copy_TBps"] * 1000
    assert gpu.bf16_TFLOPs == measured["gemm_bf16_TFLOPs"]["8192"]
    assert gpu.sources["hbm_bandwidth_GBps"] == "measured"
    assert specs.load_gpu("h100-sxm").sources["bf16_TFLOPs"] == "datasheet"


def test_heterogeneous_experts(tmp_path):
    base = specs.to_dict(specs.load_model("olmoe-1b-7b"))
    base.update(name="duo", num_experts=4, top_k=1, expert_intermediate_sizes=[256, 256, 1024, 1024],
                allow_layer_skip=True)
    path = tmp_path / "duo.yaml"
    path.write_text(yaml.safe_dump(base))
    m = specs.load_model(str(path))
    assert m.expert_sizes == (256, 256, 1024, 1024)
    assert m.expert_weight_bytes(0) * 4 == m.expert_weight_bytes(3)


@pytest.mark.parametrize("edit,field", [
    ({"top_k": 0}, "top_k"), ({"num_experts": "many"}, "num_experts"),
    ({"attention": {"kind": "gqa", "num_heads": 32, "num_kv_heads": 5, "head_dim": 128}},
     "attention.num_kv_heads"),
    ({"colour": "red"}, "colour"), ({"expert_intermediate_sizes": [1, 2]}, "expert_intermediate_sizes"),
])
def test_bad_model_yaml_names_file_and_field(tmp_path, edit, field):
    d = specs.to_dict(specs.load_model("mixtral-8x7b"))
    d.update(edit)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(InputError) as e:
        specs.load_model(str(path))
    assert e.value.field == field and str(path) in str(e.value)


def test_missing_field_and_bad_yaml(tmp_path):
    d = specs.to_dict(specs.load_cluster("dgx-h100"))
    del d["intra"]
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(InputError, match="intra: required"):
        specs.load_cluster(str(p))
    p.write_text("name: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        specs.load_cluster(str(p))


def test_unknown_name_lists_known_ones():
    with pytest.raises(InputError, match="known: .*dgx-h100"):
        specs.load_cluster("dgx-h999")


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        specs.load_model("mixtral-8x7b").top_k = 3
