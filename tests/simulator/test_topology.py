import numpy as np

from specmoe.simulator.network import link_loads
from specmoe.simulator.topology import LINK_CLASSES, build_topology
from specmoe.specs import ClusterSpec, LinkSpec, load_cluster


def test_nvswitch_node_paths_and_attributes():
    topo = build_topology(load_cluster("dgx-h100"))
    g = topo.graph
    assert sum(1 for n in g if n[0] == "gpu") == 8 and ("nvswitch", 0) in g
    e = g.edges[("gpu", 0), ("nvswitch", 0)]
    assert e["bandwidth"] == 450e9 and e["latency"] == 1e-6 and e["link_class"] == "nvlink"
    path = topo.path(0, 5)
    assert len(path) == 2 and topo.pair_latency[0, 5] == 2e-6
    assert topo.pair_class[0, 5] == LINK_CLASSES.index("nvlink") and topo.pair_class[3, 3] == -1
    assert topo.path(2, 2) == []


def test_cross_node_path_uses_the_gpus_own_nic():
    topo = build_topology(load_cluster("2x8-h100-ib400"))
    g = topo.graph
    nodes = {}
    for u, v, d in g.edges(data=True):
        nodes[d["eid"]] = (u, v)
    hops = [nodes[e] for e in topo.path(3, 13)]
    assert hops == [(("gpu", 3), ("nic", 0, 3)), (("nic", 0, 3), ("netsw",)),
                    (("netsw",), ("nic", 1, 5)), (("nic", 1, 5), ("gpu", 13))]
    assert topo.pair_class[3, 13] == LINK_CLASSES.index("network")


def test_nic_spreading_with_fewer_nics_than_gpus():
    c = ClusterSpec(name="x", gpu="h100-sxm", num_nodes=2, gpus_per_node=4, fabric="nvswitch",
                    intra=LinkSpec(400, 1), network="ib", nic=LinkSpec(50, 2), nics_per_node=2,
                    collective_latency_us=30)
    topo = build_topology(c)
    g = topo.graph
    name = {d["eid"]: (u, v) for u, v, d in g.edges(data=True)}
    first_hop = {s: name[topo.path(s, 4 if s < 4 else 0)[0]][1] for s in range(8)}
    assert first_hop[0] == first_hop[2] == ("nic", 0, 0)
    assert first_hop[1] == first_hop[3] == ("nic", 0, 1)
    assert first_hop[5] == ("nic", 1, 1)


def test_pcie_paths_cross_host_bridge_between_switches():
    topo = build_topology(load_cluster("8x-l40s-pcie"))
    assert len(topo.path(0, 1)) == 2  # same PCIe switch
    assert len(topo.path(0, 2)) == 4  # switch -> host -> switch
    assert topo.pair_class[0, 2] == LINK_CLASSES.index("pcie")
    assert topo.pair_latency[0, 2] == 2 * 2e-6 + 2 * 3e-6


def test_structured_link_loads_equal_full_incidence():
    for name in ("dgx-h100", "2x8-h100-ib400", "8x-l40s-pcie", "h200x2-slow"):
        topo = build_topology(load_cluster(name))
        G = topo.num_gpus
        m = np.random.default_rng(0).integers(0, 9, (2, G, G)).astype(float)
        off = m * (1 - np.eye(G))
        ref = np.stack([topo.pair_links.T @ x.ravel() for x in off])
        np.testing.assert_allclose(link_loads(topo, m), ref)


def test_topology_is_cached_per_cluster():
    c = load_cluster("dgx-h100")
    assert build_topology(c) is build_topology(c)
