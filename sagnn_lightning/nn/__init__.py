"""Neural-network layers: scatter ops, distance basis, MEGNet block, atom self-attention, readout, and the
composition layers (element features, fraction-weighted messages and readout)."""

from sagnn_lightning.nn.attention import AtomSelfAttention, AttentionMaps, split_by_crystal
from sagnn_lightning.nn.basis import GaussianExpansion
from sagnn_lightning.nn.concat import ConcatFeatures, concat_features
from sagnn_lightning.nn.dense import MLP, ShiftedSoftplus, ShiftedSoftplusStack, make_activation, mlp
from sagnn_lightning.nn.element_features import ElementFeatures
from sagnn_lightning.nn.fraction_message import FractionWeightedMessagePassing
from sagnn_lightning.nn.fraction_pool import FractionWeightedPooling
from sagnn_lightning.nn.fused_attention import FusedSelfAttention, PaddedLayout
from sagnn_lightning.nn.gathered_linear import GatheredLinear
from sagnn_lightning.nn.geometry import bond_lengths, bond_vectors
from sagnn_lightning.nn.megnet_block import BlockSegments, MEGNetBlock
from sagnn_lightning.nn.paired_set2set import PairedSet2Set, set2set_pair
from sagnn_lightning.nn.parameter_views import ParameterViews
from sagnn_lightning.nn.readout import MEGNetReadout, Set2Set
from sagnn_lightning.nn.scatter import (
    SegmentMean,
    scatter_max,
    scatter_mean,
    scatter_softmax,
    scatter_sum,
    segment_counts,
    torch_scatter_available,
)

__all__ = [
    "AtomSelfAttention",
    "AttentionMaps",
    "ConcatFeatures",
    "ElementFeatures",
    "FractionWeightedMessagePassing",
    "FractionWeightedPooling",
    "FusedSelfAttention",
    "GatheredLinear",
    "GaussianExpansion",
    "MEGNetBlock",
    "BlockSegments",
    "MLP",
    "MEGNetReadout",
    "PaddedLayout",
    "PairedSet2Set",
    "ParameterViews",
    "SegmentMean",
    "Set2Set",
    "ShiftedSoftplus",
    "ShiftedSoftplusStack",
    "bond_lengths",
    "bond_vectors",
    "concat_features",
    "make_activation",
    "mlp",
    "scatter_max",
    "scatter_mean",
    "scatter_softmax",
    "scatter_sum",
    "segment_counts",
    "set2set_pair",
    "split_by_crystal",
    "torch_scatter_available",
]
