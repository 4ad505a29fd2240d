"""Composition layers against naive per-node loops: fraction-weighted messages and readout, element features."""

from __future__ import annotations

import pytest
import torch
from pymatgen.core import Element

from sagnn_lightning.data import collate_graphs, composition_to_graph
from sagnn_lightning.nn import (
    AtomSelfAttention,
    ElementFeatures,
    FractionWeightedMessagePassing,
    FractionWeightedPooling,
)

FORMULAS = ("Fe2O3", "Ag(AuS)2", "Si", "Fe0.62C0.00095Mn0.00052Ni0.19Co0.15")


def batch_of(formulas=FORMULAS):
    return collate_graphs([composition_to_graph(f) for f in formulas])


def test_message_passing_equals_a_naive_loop() -> None:
    torch.manual_seed(0)
    layer = FractionWeightedMessagePassing(6, heads=3, hidden=(5,)).double()
    batch = batch_of()
    x = torch.randn(batch.num_nodes, 6, dtype=torch.float64)
    w = batch.fractions
    out = layer(x, w.log(), batch.edge_index)
    expected = torch.empty_like(x)
    for i in range(batch.num_nodes):  # every node of i's own formula, weighted by fraction × exp(gate)
        senders = [j for j in range(batch.num_nodes) if batch.batch[j] == batch.batch[i]]
        pairs = torch.stack([torch.cat([x[i], x[j]]) for j in senders])
        gate = layer.gate(pairs)  # [S, H]
        a = w[senders, None] * gate.exp()
        a = a / a.sum(0, keepdim=True)
        msg = layer.message(pairs).view(len(senders), 3, 6)
        expected[i] = x[i] + (a[..., None] * msg).sum(0).mean(0)
    torch.testing.assert_close(out, layer.norm(expected))


def test_pooling_equals_a_naive_loop_and_constant_gates_give_the_weighted_mean() -> None:
    torch.manual_seed(1)
    pool = FractionWeightedPooling(4, heads=2, hidden=(3,)).double()
    batch = batch_of()
    x = torch.randn(batch.num_nodes, 4, dtype=torch.float64)
    out = pool(x, batch.fractions.log(), batch.batch, batch.num_graphs)
    for g in range(batch.num_graphs):
        rows = (batch.batch == g).nonzero().ravel()
        a = batch.fractions[rows, None] * pool.gate(x[rows]).exp()
        a = a / a.sum(0, keepdim=True)
        values = pool.value(x[rows]).view(len(rows), 2, 4)
        torch.testing.assert_close(out[g], (a[..., None] * values).sum(0).mean(0))
    with torch.no_grad():  # gate ≡ 0: y = Σ w_i m(x_i), the fraction-weighted mean
        pool.gate[-1].weight.zero_()
        pool.gate[-1].bias.zero_()
    out = pool(x, batch.fractions.log(), batch.batch, batch.num_graphs)
    values = pool.value(x).view(-1, 2, 4).mean(1)
    for g in range(batch.num_graphs):
        rows = batch.batch == g
        torch.testing.assert_close(out[g], (batch.fractions[rows, None] * values[rows]).sum(0))


def test_atom_self_attention_with_log_fraction_key_bias_weights_keys_by_fraction() -> None:
    """The attention of :class:`CompositionSAGNN`: weights ∝ w_j exp(q_i·k_j / √d), checked per formula."""
    torch.manual_seed(2)
    attn = AtomSelfAttention(8, heads=2, backend="torch", residual=False, layer_norm=False).double()
    batch = batch_of()
    x = torch.randn(batch.num_nodes, 8, dtype=torch.float64)
    out = attn(x, batch.ptr, batch.max_num_atoms, key_bias=batch.fractions.log())
    ptr = batch.ptr.tolist()
    for start, end in zip(ptr[:-1], ptr[1:]):
        xs, w = x[start:end], batch.fractions[start:end]
        q = attn.q_proj(xs).view(-1, 2, 4).transpose(0, 1)
        k = attn.k_proj(xs).view(-1, 2, 4).transpose(0, 1)
        v = attn.v_proj(xs).view(-1, 2, 4).transpose(0, 1)
        a = w * (q @ k.transpose(-1, -2) / 2.0).exp()
        heads = (a / a.sum(-1, keepdim=True)) @ v
        torch.testing.assert_close(out[start:end], attn.out_proj(heads.transpose(0, 1).reshape(-1, 8)))


@pytest.mark.parametrize("source", ["matscholar", "megnet"])
def test_element_tables_are_matminers_values(source: str) -> None:
    from matminer.utils.data import MatscholarElementData, MEGNetElementData

    data = {"matscholar": MatscholarElementData, "megnet": MEGNetElementData}[source](impute_nan=False)
    features = ElementFeatures(source)
    for symbol in ("H", "O", "Fe", "Au", "U"):
        z = Element(symbol).Z
        expected = torch.tensor([data.get_elemental_property(symbol, p) for p in data.prop_names])
        torch.testing.assert_close(features(torch.tensor([z]))[0], expected.float())


def test_learned_features_train_and_unknown_sources_fail() -> None:
    features = ElementFeatures("learned", learned_dim=5)
    assert features(torch.tensor([1, 26])).shape == (2, 5)
    assert sum(p.numel() for p in features.parameters()) == 104 * 5
    assert sum(p.numel() for p in ElementFeatures("matscholar").parameters()) == 0  # a fixed table
    with pytest.raises(ValueError, match="element_features must be"):
        ElementFeatures("onehot")  # type: ignore[arg-type]
