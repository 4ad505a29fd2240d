"""Batching: a list of graphs → one packed ``Batch`` (PyG contract + ``max_num_atoms``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch_geometric.data import Batch, Data


def collate_graphs(graphs: Sequence[Data]) -> Batch:
    """Pack graphs into a ``Batch``.

    The batch carries PyG's ``batch [N]`` and ``ptr [B+1]``, ``edge_index`` offset per graph,
    ``lattice [B, 3, 3]``, ``state [B, S]``, ``y [B, T]`` when present, and ``max_num_atoms``:
    the largest atom count in the batch as a Python ``int``, computed here on the CPU so the
    attention kernel never reads it back from the GPU.
    """
    if len(graphs) == 0:
        raise ValueError("collate_graphs got an empty list of graphs")
    batch = Batch.from_data_list(list(graphs))
    batch.max_num_atoms = max(int(g.num_nodes) for g in graphs)
    return batch
