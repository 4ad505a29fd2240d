"""Batching: a list of graphs → one packed ``Batch`` (PyG contract + ``max_num_atoms``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch_geometric.data import Batch, Data


def collate_graphs(graphs: Sequence[Data]) -> Batch:
    """Pack graphs into a ``Batch``.

    The batch carries PyG's ``batch [N]`` and ``ptr [B+1]``, ``edge_index`` offset per graph,
    ``lattice [B, 3, 3]``, ``state [B, S]``, ``y [B, T]`` when present, and ``max_num_atoms``:
    the largest atom count in the batch as a Python ``int``, computed here on the CPU so the
    attention kernel never reads it back from the GPU. ``cutoff``: the neighbour cutoff (Å, a Python ``float``)
    the graphs were built with, when they all say (``structure_to_graph`` and the graph cache stamp it), so that a
    model built for another cutoff refuses the batch.

    Raises:
        ValueError: no graphs, or graphs built with different cutoffs.
    """
    if len(graphs) == 0:
        raise ValueError("collate_graphs got an empty list of graphs")
    cutoffs = {getattr(g, "cutoff", None) for g in graphs}
    if len(cutoffs) > 1:
        raise ValueError(
            f"collate_graphs: graphs built with different cutoffs {sorted(map(str, cutoffs))} in one batch"
        )
    batch = Batch.from_data_list(list(graphs))
    batch.max_num_atoms = max(int(g.num_nodes) for g in graphs)
    (cutoff,) = cutoffs
    if cutoff is not None:
        batch.cutoff = float(cutoff)
    return batch
