"""Cluster topology: a networkx graph of GPUs, switches and NICs, with cached GPU-to-GPU paths.

Nodes: `("gpu", g)`, `("nvswitch", n)`, `("pcie", n, s)`, `("host", n)`, `("nic", n, i)`,
`("netsw",)`. Every physical link is two directed edges (bandwidth is per direction) with
attributes `bandwidth` (bytes/s), `latency` (s), `link_class` (nvlink | pcie | network) and
`eid` (the edge's index into the arrays of `Topology`).

Paths: inside a node, the lowest-latency path (networkx); across nodes, GPU g leaves through
its node's NIC `g % nics_per_node` and enters the destination through the destination GPU's
NIC (traffic spread over the NICs, as ClusterSpec documents), crossing one network switch.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import networkx as nx
import numpy as np
import scipy.sparse as sp

from specmoe.specs import ClusterSpec

LINK_CLASSES = ("nvlink", "pcie", "network")  # ordered: a path's class is its highest


@dataclass(frozen=True, eq=False)
class Topology:
    """A cluster's graph plus dense per-edge and per-GPU-pair arrays.

    edge_bw:      float64 [num_edges]  bytes/s per direction
    edge_latency: float64 [num_edges]  s
    edge_class:   int8    [num_edges]  index into LINK_CLASSES
    pair_links:   csr [num_gpus * num_gpus, num_edges], 1 where the path of pair
                  (src, dst) (row src * num_gpus + dst) crosses the edge; empty rows for src == dst
    pair_latency: float64 [num_gpus, num_gpus]  sum of edge latencies on the path
    pair_class:   int8    [num_gpus, num_gpus]  highest link class on the path; -1 on the diagonal
    The same paths in structured form, for fast link loads:
    intra_pairs:  int64 [n_intra]  flat pair ids (src * num_gpus + dst) inside a node
    intra_links:  csr [n_intra, num_edges]  their paths
    up_links:     int64 [num_gpus, hops]  edges from a GPU to the network switch
    down_links:   int64 [num_gpus, hops]  edges from the network switch to a GPU
    node_of:      int64 [num_gpus]
    up_matrix, down_matrix: csr [num_gpus, num_edges]  the same as incidence matrices
    """

    cluster: ClusterSpec
    graph: nx.DiGraph
    edge_bw: np.ndarray
    edge_latency: np.ndarray
    edge_class: np.ndarray
    pair_links: sp.csr_matrix
    pair_latency: np.ndarray
    pair_class: np.ndarray
    intra_pairs: np.ndarray
    intra_links: sp.csr_matrix
    up_links: np.ndarray
    down_links: np.ndarray
    node_of: np.ndarray
    up_matrix: sp.csr_matrix
    down_matrix: sp.csr_matrix

    @property
    def num_gpus(self) -> int:
        return self.cluster.num_gpus

    def path(self, src: int, dst: int) -> list[int]:
        """Edge ids on the path from GPU `src` to GPU `dst`, in order (empty when equal)."""
        row = src * self.num_gpus + dst
        eids = self.pair_links.indices[self.pair_links.indptr[row]:self.pair_links.indptr[row + 1]]
        out_of = {self.edge_nodes[e][0]: int(e) for e in eids}
        node, path = ("gpu", src), []
        while node in out_of:
            path.append(out_of[node])
            node = self.edge_nodes[path[-1]][1]
        return path

    @functools.cached_property
    def edge_nodes(self) -> list[tuple]:
        """`(u, v)` of each edge id."""
        out = [None] * self.graph.number_of_edges()
        for u, v, e in self.graph.edges(data="eid"):
            out[e] = (u, v)
        return out


def build_graph(cluster: ClusterSpec) -> nx.DiGraph:
    """The cluster as a directed graph (two edges per physical link)."""
    g = nx.DiGraph()

    def link(a, b, spec, cls):
        for u, v in ((a, b), (b, a)):
            g.add_edge(u, v, bandwidth=spec.bandwidth, latency=spec.latency, link_class=cls,
                       eid=g.number_of_edges())

    per_node = cluster.gpus_per_node
    for n in range(cluster.num_nodes):
        gpus = [("gpu", n * per_node + i) for i in range(per_node)]
        g.add_nodes_from(gpus)
        if cluster.fabric == "nvswitch":
            for gpu in gpus:
                link(gpu, ("nvswitch", n), cluster.intra, "nvlink")
        elif cluster.fabric == "nvlink":
            for a, b in itertools.combinations(gpus, 2):
                link(a, b, cluster.intra, "nvlink")
        else:  # pcie: GPUs on PCIe switches, switches on the host bridge
            for i, gpu in enumerate(gpus):
                link(gpu, ("pcie", n, i // cluster.gpus_per_pcie_switch), cluster.intra, "pcie")
            for s in range(per_node // cluster.gpus_per_pcie_switch):
                link(("pcie", n, s), ("host", n), cluster.host_link, "pcie")
        if cluster.num_nodes > 1:
            _attach_nics(cluster, n, gpus, link)
    return g


def _attach_nics(cluster: ClusterSpec, n: int, gpus: list, link) -> None:
    """NICs join the network switch. On NVLink fabrics a NIC shares a PCIe switch with its
    GPUs (GPUDirect RDMA); the spec gives no PCIe figure, so that hop is priced at the NIC's
    own rate (the NIC is the bottleneck either way). On PCIe fabrics NICs sit on the host bridge."""
    for i in range(cluster.nics_per_node):
        nic = ("nic", n, i)
        link(nic, ("netsw",), cluster.nic, "network")
        if cluster.fabric == "pcie":
            link(nic, ("host", n), cluster.host_link, "pcie")
    if cluster.fabric != "pcie":
        for j, gpu in enumerate(gpus):
            link(gpu, ("nic", n, j % cluster.nics_per_node), cluster.nic, "pcie")


def _hop_weight(u, v, d) -> float:
    """Latency, plus 1 ns per hop so that zero-latency links still prefer fewer hops."""
    return d["latency"] + 1e-9


def _edge_path(g: nx.DiGraph, nodes: list) -> list[int]:
    return [g.edges[u, v]["eid"] for u, v in zip(nodes[:-1], nodes[1:])]


@functools.lru_cache(maxsize=16)
def build_topology(cluster: ClusterSpec) -> Topology:
    """Graph, edge arrays and all GPU-pair paths of `cluster`; cached per cluster."""
    g = build_graph(cluster)
    E, G, per_node = g.number_of_edges(), cluster.num_gpus, cluster.gpus_per_node
    attrs = sorted(((d["eid"], d) for _, _, d in g.edges(data=True)), key=lambda x: x[0])
    edge_bw = np.array([d["bandwidth"] for _, d in attrs], np.float64)
    edge_lat = np.array([d["latency"] for _, d in attrs], np.float64)
    edge_cls = np.array([LINK_CLASSES.index(d["link_class"]) for _, d in attrs], np.int8)

    rows, cols = [], []
    for n in range(cluster.num_nodes):  # intra-node pairs: lowest-latency path
        for a, b in itertools.permutations(range(n * per_node, (n + 1) * per_node), 2):
            p = _edge_path(g, nx.shortest_path(g, ("gpu", a), ("gpu", b), weight=_hop_weight))
            rows += [a * G + b] * len(p)
            cols += p
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    intra_pairs = np.unique(rows)
    intra_links = sp.csr_matrix((np.ones(len(rows)), (np.searchsorted(intra_pairs, rows), cols)),
                                shape=(len(intra_pairs), E))
    up, down = _nic_paths(cluster, g)
    if cluster.num_nodes > 1:
        r, c = _cross_node_links(cluster, up, down)
        rows, cols = np.concatenate([rows, r]), np.concatenate([cols, c])
    pair_links = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(G * G, E))
    pair_links.sum_duplicates()
    pair_lat = (pair_links @ edge_lat).reshape(G, G)
    pair_cls = _pair_class(pair_links, edge_cls, G)
    return Topology(cluster, g, edge_bw, edge_lat, edge_cls, pair_links, pair_lat, pair_cls,
                    intra_pairs, intra_links, up, down, np.arange(G) // per_node,
                    _incidence(up, E), _incidence(down, E))


def _incidence(hops: np.ndarray, E: int) -> sp.csr_matrix:
    """`hops [G, h]` edge ids -> csr `[G, E]` with a 1 per (row, edge)."""
    G, h = hops.shape
    return sp.csr_matrix((np.ones(G * h), (np.repeat(np.arange(G), h), hops.ravel())), shape=(G, E))


def _nic_paths(cluster: ClusterSpec, g: nx.DiGraph) -> tuple[np.ndarray, np.ndarray]:
    """Edge ids from each GPU up to the network switch and back down, `[G, hops]` each
    (`[G, 0]` on a single node)."""
    G, per_node, nics = cluster.num_gpus, cluster.gpus_per_node, cluster.nics_per_node
    if cluster.num_nodes == 1:
        return np.zeros((G, 0), np.int64), np.zeros((G, 0), np.int64)
    up, down = [], []
    for gpu in range(G):
        nic = ("nic", gpu // per_node, (gpu % per_node) % nics)
        up.append(_edge_path(g, nx.shortest_path(g, ("gpu", gpu), nic, weight=_hop_weight))
                  + [g.edges[nic, ("netsw",)]["eid"]])
        down.append([g.edges[("netsw",), nic]["eid"]]
                    + _edge_path(g, nx.shortest_path(g, nic, ("gpu", gpu), weight=_hop_weight)))
    return np.array(up, np.int64), np.array(down, np.int64)


def _cross_node_links(cluster: ClusterSpec, up: np.ndarray, down: np.ndarray):
    """Rows and edge ids of every cross-node pair: up(src) then down(dst)."""
    G, per_node = cluster.num_gpus, cluster.gpus_per_node
    src, dst = np.divmod(np.arange(G * G), G)
    cross = src // per_node != dst // per_node
    src, dst = src[cross], dst[cross]
    links = np.concatenate([up[src], down[dst]], axis=1)  # [pairs, hops]
    rows = np.repeat(src * G + dst, links.shape[1])
    return rows, links.ravel()


def _pair_class(pair_links: sp.csr_matrix, edge_cls: np.ndarray, G: int) -> np.ndarray:
    """Highest link class on each pair's path, `[G, G]`, -1 where there is no path."""
    out = np.full(G * G, -1, np.int8)
    counts = np.diff(pair_links.indptr)
    has = counts > 0
    vals = edge_cls[pair_links.indices].astype(np.int64)
    out[has] = np.maximum.reduceat(vals, pair_links.indptr[:-1][has])
    return out.reshape(G, G)
