"""Graph primitives on photos (nodes 0..N-1), through networkx: connected components, a maximum spanning forest,
the nodes reachable from one node and a breadth-first walk of a tree.

Used by retrieval (disconnected groups of photos), the scenes stage (groups of verified pairs), the fold check
(cuts of the camera graph's maximum spanning tree) and upright detection (turns propagated along the strongest
pairs).
"""

from __future__ import annotations

from typing import Iterable

import networkx as nx
import numpy as np


def _graph(n: int, edges: Iterable[tuple[int, int]]) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from((int(a), int(b)) for a, b in edges)
    return g


def connected_components(n: int, edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """The connected components of the undirected graph on nodes ``0..n-1`` with ``edges`` (pairs of ints).

    Returns:
        Each component as its nodes in ascending order; components ordered by their smallest node.
    """
    return sorted((sorted(c) for c in nx.connected_components(_graph(n, edges))), key=lambda c: c[0])


def maximum_spanning_forest(weight: np.ndarray) -> list[tuple[int, int]]:
    """Edges ``(i, j)``, ``i < j``, of a maximum spanning forest of the undirected graph with symmetric weights
    ``weight`` float or int [N, N] (0 or less: no edge), heaviest first.

    Ties are broken as Kruskal's algorithm over the upper triangle's edges in row-major order with a stable sort
    would (the first such edge wins), so the forest is unique and the same on every run.
    """
    weight = np.asarray(weight)
    iu = np.argwhere(np.triu(weight > 0, 1))
    return maximum_spanning_forest_of_edges(len(weight), iu.tolist(), weight[iu[:, 0], iu[:, 1]].tolist())


def maximum_spanning_forest_of_edges(n: int, edges: list[tuple[int, int]], weights: list[float]) \
        -> list[tuple[int, int]]:
    """As :func:`maximum_spanning_forest`, for a graph given as ``edges`` (pairs of nodes in ``0..n-1``) with
    ``weights`` (> 0), without an [N, N] matrix (memory linear in the edges). Ties: the earlier edge of ``edges``
    wins."""
    order = np.argsort(-np.asarray(weights, dtype=np.float64), kind="stable")
    g = nx.Graph()
    g.add_nodes_from(range(n))
    # the rank in that order as the weight: all distinct, so the minimum spanning forest is unique (Kruskal's)
    g.add_weighted_edges_from((int(edges[k][0]), int(edges[k][1]), r) for r, k in enumerate(order.tolist()))
    tree = nx.minimum_spanning_tree(g, algorithm="kruskal")
    return [(min(a, b), max(a, b)) for a, b, _ in sorted(tree.edges(data="weight"), key=lambda e: e[2])]


def reachable(n: int, edges: Iterable[tuple[int, int]], start: int) -> np.ndarray:
    """bool [N]: the nodes connected to ``start`` (itself included) in the undirected graph with ``edges``."""
    side = np.zeros(n, dtype=bool)
    side[list(nx.node_connected_component(_graph(n, edges), start))] = True
    return side


def tree_walk(n: int, edges: Iterable[tuple[int, int]], root: int) -> list[tuple[int, int]]:
    """``(parent, child)`` for every node reachable from ``root`` in the forest ``edges`` but the root itself, in
    breadth-first order from it (a parent always before its children)."""
    return [(int(a), int(b)) for a, b in nx.bfs_edges(_graph(n, edges), root)]
