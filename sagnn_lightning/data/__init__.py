"""Structure → graph → batch, graph cache and DataModules."""

from sagnn_lightning.data.batch import collate_graphs
from sagnn_lightning.data.graph import GraphSettings, StructureError, neighbor_list, structure_to_graph

__all__ = ["GraphSettings", "StructureError", "collate_graphs", "neighbor_list", "structure_to_graph"]
