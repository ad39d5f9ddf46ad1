"""GPUSpec and ClusterSpec: the hardware a plan runs on.

Every figure carries its provenance in `sources`: `measured` (on our machines, with the
file that holds the measurement) or `datasheet` (vendor figure), or `estimate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from specmoe.specs._fields import check

PROVENANCE = ("measured", "datasheet", "estimate")


def _check_sources(sources: dict, names: tuple[str, ...]) -> None:
    for k, v in sources.items():
        check(k in names, f"sources.{k}", f"unknown figure; known: {', '.join(names)}")
        check(v in PROVENANCE, f"sources.{k}", f"expected one of {', '.join(PROVENANCE)}")


@dataclass(frozen=True)
class GPUSpec:
    name: str
    memory_GiB: float
    hbm_bandwidth_GBps: float
    bf16_TFLOPs: float
    price_per_hour_usd: float
    sources: dict[str, str] = field(default_factory=dict)
    note: str = ""
    memory_bytes: float = field(init=False)
    hbm_bandwidth: float = field(init=False)  # bytes/s
    bf16_flops: float = field(init=False)  # FLOP/s

    def __post_init__(self):
        for f in ("memory_GiB", "hbm_bandwidth_GBps", "bf16_TFLOPs"):
            check(getattr(self, f) > 0, f, "must be positive")
        check(self.price_per_hour_usd >= 0, "price_per_hour_usd", "must be >= 0")
        _check_sources(self.sources, ("memory_GiB", "hbm_bandwidth_GBps", "bf16_TFLOPs",
                                      "price_per_hour_usd"))
        object.__setattr__(self, "memory_bytes", self.memory_GiB * 2**30)
        object.__setattr__(self, "hbm_bandwidth", self.hbm_bandwidth_GBps * 1e9)
        object.__setattr__(self, "bf16_flops", self.bf16_TFLOPs * 1e12)


@dataclass(frozen=True)
class LinkSpec:
    """One link class: bandwidth per direction and one-way latency."""

    bandwidth_GBps: float
    latency_us: float
    source: str = "datasheet"
    bandwidth: float = field(init=False)  # bytes/s
    latency: float = field(init=False)  # s

    def __post_init__(self):
        check(self.bandwidth_GBps > 0, "bandwidth_GBps", "must be positive")
        check(self.latency_us >= 0, "latency_us", "must be >= 0")
        check(self.source in PROVENANCE, "source", f"expected one of {', '.join(PROVENANCE)}")
        object.__setattr__(self, "bandwidth", self.bandwidth_GBps * 1e9)
        object.__setattr__(self, "latency", self.latency_us * 1e-6)


FABRICS = ("nvswitch", "nvlink", "pcie")


@dataclass(frozen=True)
class ClusterSpec:
    """Nodes of identical GPUs.

    Inside a node (`fabric`):
      - nvswitch: every GPU has one `intra` link to a shared NVSwitch;
      - nvlink: GPUs are linked pairwise by `intra` (only sensible for small nodes);
      - pcie: `gpus_per_pcie_switch` GPUs hang off each PCIe switch by `intra` links, and each
        switch reaches the host bridge over `host_link` (shared, hence slow paths).
    Across nodes, each node has `nics_per_node` NICs (`nic` link each) on one network switch;
    the NICs are spread over the node's GPUs (GPU g uses NIC g % nics_per_node).
    `collective_latency_us` is the fixed cost of launching and synchronising one collective
    (NCCL's small-message floor), charged once per collective.
    """

    name: str
    gpu: str
    num_nodes: int
    gpus_per_node: int
    fabric: str
    intra: LinkSpec
    collective_latency_us: float
    host_link: LinkSpec | None = None
    gpus_per_pcie_switch: int = 0
    network: str = "none"  # ib | ethernet | none
    nic: LinkSpec | None = None
    nics_per_node: int = 0
    collective_latency_source: str = "estimate"
    note: str = ""
    num_gpus: int = field(init=False)

    def __post_init__(self):
        check(self.num_nodes > 0, "num_nodes", "must be positive")
        check(self.gpus_per_node > 0, "gpus_per_node", "must be positive")
        check(self.fabric in FABRICS, "fabric", f"expected one of {', '.join(FABRICS)}")
        check(self.collective_latency_us >= 0, "collective_latency_us", "must be >= 0")
        check(self.collective_latency_source in PROVENANCE, "collective_latency_source",
              f"expected one of {', '.join(PROVENANCE)}")
        if self.fabric == "pcie":
            check(self.host_link is not None, "host_link", "required for a pcie fabric")
            check(self.gpus_per_pcie_switch > 0
                  and self.gpus_per_node % self.gpus_per_pcie_switch == 0,
                  "gpus_per_pcie_switch", "must be positive and divide gpus_per_node")
        check(self.network in ("ib", "ethernet", "none"), "network",
              "expected ib, ethernet or none")
        if self.num_nodes > 1:
            check(self.network != "none" and self.nic is not None and self.nics_per_node > 0,
                  "nic", "a multi-node cluster needs network, nic and nics_per_node")
        object.__setattr__(self, "num_gpus", self.num_nodes * self.gpus_per_node)
