"""Small specs shared by the simulator tests."""
import pytest

from specmoe.specs import AttentionSpec, ClusterSpec, LinkSpec, ModelSpec


def tiny_model(**kw) -> ModelSpec:
    args = dict(name="tiny", source="test", num_layers=3, num_dense_layers=1,
                dense_intermediate_size=256, hidden_size=64, num_experts=8, top_k=2,
                expert_intermediate_size=128, attention=AttentionSpec("gqa", 4, 2, 16),
                vocab_size=128)
    args.update(kw)
    return ModelSpec(**args)


def switch_cluster(gpus=4, bw=100.0, lat=1.0, alpha=10.0) -> ClusterSpec:
    return ClusterSpec(name=f"sw{gpus}", gpu="h100-sxm", num_nodes=1, gpus_per_node=gpus,
                       fabric="nvswitch", intra=LinkSpec(bw, lat), collective_latency_us=alpha)


@pytest.fixture
def model():
    return tiny_model()
