"""Model, GPU, cluster and workload specs, loaded from shipped YAML presets or users' files.

`load_model("deepseek-v3")` reads a preset; `load_model("my.yaml")` reads a file.
"""
from __future__ import annotations

from pathlib import Path

from specmoe.errors import InputError
from specmoe.specs._fields import from_dict, read_yaml, to_dict
from specmoe.specs.hardware import ClusterSpec, GPUSpec, LinkSpec
from specmoe.specs.model import AttentionSpec, ModelSpec
from specmoe.specs.workload import WorkloadSpec

PRESETS = Path(__file__).parent / "presets"
KINDS = {"model": ("models", ModelSpec), "gpu": ("gpus", GPUSpec),
         "cluster": ("clusters", ClusterSpec), "workload": ("workloads", WorkloadSpec)}

__all__ = ["AttentionSpec", "ClusterSpec", "GPUSpec", "LinkSpec", "ModelSpec", "WorkloadSpec",
           "list_presets", "load", "load_model", "load_gpu", "load_cluster", "load_workload",
           "to_dict"]


def list_presets(kind: str) -> list[str]:
    return sorted(p.stem for p in (PRESETS / KINDS[kind][0]).glob("*.yaml"))


def load(kind: str, name_or_path: str):
    """A spec from a preset name or a YAML path; unknown names list the known ones."""
    folder, cls = KINDS[kind]
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = PRESETS / folder / f"{name_or_path}.yaml"
        if not path.exists():
            known = ", ".join(list_presets(kind))
            raise InputError(f"--{kind}", "", f"unknown {kind} {name_or_path!r}; known: {known}")
    return from_dict(cls, read_yaml(path), path)


def load_model(name: str) -> ModelSpec:
    return load("model", name)


def load_gpu(name: str) -> GPUSpec:
    return load("gpu", name)


def load_cluster(name: str) -> ClusterSpec:
    cluster = load("cluster", name)
    load_gpu(cluster.gpu)  # fail early on a dangling GPU name
    return cluster


def load_workload(name: str) -> WorkloadSpec:
    return load("workload", name)
