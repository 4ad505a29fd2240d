"""Structure (or composition) → graph → batch, graph cache and DataModules."""

from sagnn_lightning.data.batch import collate_graphs
from sagnn_lightning.data.cache import GraphDataset, SkippedItem, default_cache_dir, load_or_build_graphs
from sagnn_lightning.data.composition import CompositionError, CompositionSettings, composition_to_graph
from sagnn_lightning.data.graph import GraphSettings, StructureError, neighbor_list, structure_to_graph

__all__ = ["GraphSettings", "StructureError", "collate_graphs", "neighbor_list", "structure_to_graph"]
__all__ += ["CompositionError", "CompositionSettings", "composition_to_graph"]
__all__ += ["GraphDataset", "SkippedItem", "default_cache_dir", "load_or_build_graphs"]

# DataModules and readers (import pytorch_lightning, so loaded lazily: `sagnn_lightning.data` stays light
# for graph-building worker processes)
_LAZY = {
    "MatbenchDataModule": "sagnn_lightning.data.matbench",
    "MATBENCH_TASKS": "sagnn_lightning.data.tasks",
    "CrystalDataModule": "sagnn_lightning.data.crystal",
    "CompositionDataModule": "sagnn_lightning.data.composition_table",
    "MATBENCH_COMPOSITION_TASKS": "sagnn_lightning.data.tasks",
    "read_structures": "sagnn_lightning.data.readers",
    "read_data": "sagnn_lightning.data.readers",
    "DataFormatError": "sagnn_lightning.data.table",
    "SAMPLES": "sagnn_lightning.data.samples",
}
__all__ += list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sagnn_lightning.data' has no attribute {name!r}")
