"""Static shapes: padded batches are inert. For real crystals (phonons or the bundled perovskites) padded to every
capacity chosen from their batches, the real crystals' outputs, the loss and every gradient equal the unpadded
batch's, for SA-GNN and the composition model at the recipes' configuration (float64)."""

from __future__ import annotations

import pytest
import torch

from sagnn_lightning.data import collate_graphs
from sagnn_lightning.data.composition import CompositionSettings
from sagnn_lightning.data.graph import GraphSettings
from sagnn_lightning.data.inputs import item_to_graph
from sagnn_lightning.data.padding import Capacity, choose_capacities, collate_padded, pad_graphs
from sagnn_lightning.data.readers import iter_inputs
from sagnn_lightning.lit.module import SAGNNModule
from tests.scripts import load_script

step_ops = load_script("benchmarks/step_ops.py")


def _graphs(kind: str, count: int = 36) -> list:
    source = step_ops.PHONONS if step_ops.PHONONS.is_file() else step_ops.sample_path("mp_abx3_perovskites")
    entries = [e for e, _ in zip(iter_inputs(source), range(count))]
    graphs = []
    for k, entry in enumerate(entries):
        if kind == "crystal":
            graph = item_to_graph(entry.item, GraphSettings(cutoff=5.0), entry.label)
        else:
            graph = item_to_graph(step_ops._formula(entry.item), CompositionSettings(), entry.label)
        graph.y = torch.tensor([[float(k % 7) - 3.0]])
        graph.sample_id = entry.label
        graphs.append(graph)
    return graphs


def _sizes(graphs) -> tuple[int, int, int, int]:
    return (
        sum(int(g.num_nodes) for g in graphs),
        sum(int(g.edge_index.shape[1]) for g in graphs),
        len(graphs),
        max(int(g.num_nodes) for g in graphs),
    )


@pytest.mark.parametrize("name", ["sagnn_recipe", "composition_recipe"])
def test_padding_changes_no_output_loss_or_gradient(name):
    factory, kind = step_ops.models()[name]
    graphs = _graphs(kind)
    batches = [graphs[k : k + 6] for k in range(0, len(graphs), 6)]  # 6 batches of 6 real crystals
    capacities = choose_capacities([_sizes(b) for b in batches], max_buckets=3)
    assert 1 <= len(capacities) <= 3
    torch.manual_seed(0)
    module = SAGNNModule(factory().double(), target_mean=[0.5], target_std=[2.0]).double()
    used = set()
    for real in batches:
        plain, padded = collate_graphs(real), collate_padded(real, capacities)
        capacity = next(c for c in capacities if c.atoms == padded.num_nodes and c.edges == padded.num_edges)
        used.add(capacity)
        assert (padded.num_graphs, padded.num_real_graphs) == (capacity.graphs, len(real))
        n_real = plain.num_nodes
        assert bool((padded.edge_index[:, plain.num_edges :] >= n_real).all())  # no padding edge touches a real atom
        results = []
        for batch in (plain, padded):
            module.zero_grad()
            raw = module.model(batch)
            loss = module._loss(raw, batch.y.to(raw.dtype).reshape(raw.shape))
            loss.backward()
            results.append(
                (raw[: len(real)].detach(), loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters()})
            )
        (out_a, loss_a, grads_a), (out_b, loss_b, grads_b) = results
        assert torch.allclose(out_a, out_b, rtol=1e-10, atol=1e-10)
        assert torch.allclose(loss_a, loss_b, rtol=1e-10, atol=1e-12)
        for key, grad in grads_a.items():
            assert torch.allclose(grad, grads_b[key], rtol=1e-8, atol=1e-12), key
    assert len(used) >= 2  # several capacities were exercised


def test_predict_step_returns_the_real_rows_only():
    factory, kind = step_ops.models()["sagnn_recipe"]
    graphs = _graphs(kind, 8)
    capacity = choose_capacities([_sizes(graphs)])[0]
    module = SAGNNModule(factory()).eval()
    with torch.no_grad():
        plain = module.predict_step(collate_graphs(graphs), 0)
        padded = module.predict_step(collate_padded(graphs, [capacity]), 0)
    assert padded["sample_id"] == plain["sample_id"] and len(padded["sample_id"]) == 8
    assert torch.allclose(plain["prediction"], padded["prediction"], rtol=1e-5, atol=1e-6)


def test_capacities_fit_every_batch_and_refuse_what_does_not_fit():
    graphs = _graphs("crystal", 24)
    batches = [graphs[k : k + 4] for k in range(0, 24, 4)]
    capacities = choose_capacities([_sizes(b) for b in batches], max_buckets=2)
    assert len(capacities) <= 2 and all(any(c.fits(b) for c in capacities) for b in batches)
    tiny = Capacity(atoms=1, edges=1, graphs=1, max_atoms=1)
    with pytest.raises(ValueError, match="do not fit"):
        pad_graphs(graphs[:2], tiny)
    exact = Capacity(*_sizes(graphs[:3]))  # no padding needed: the same graphs come back
    assert exact.fits(graphs[:3]) and len(pad_graphs(graphs[:3], exact)) == 3


def test_a_datamodule_with_static_shapes_pads_every_batch_to_few_shapes(tmp_path):
    """``static_shapes=3``: every training and validation batch of a real dataset (the bundled perovskites, batch 32)
    has one of at most 3 shapes per loader, real crystals first, and the same crystals as without padding."""
    from sagnn_lightning.data.crystal import CrystalDataModule

    def module(static_shapes):
        dm = CrystalDataModule(
            "sample:mp_abx3_perovskites",
            target_columns=["band_gap"],
            batch_size=32,
            cache_dir=str(tmp_path),
            progress=False,
            static_shapes=static_shapes,
        )
        dm.setup("fit")
        return dm

    plain, padded = module(None), module(3)
    for loader in ("train_dataloader", "val_dataloader"):
        shapes = set()
        real_ids, padded_ids = [], []
        for a, b in zip(getattr(plain, loader)(), getattr(padded, loader)()):
            shapes.add((b.num_nodes, b.num_edges, b.num_graphs, b.max_num_atoms))
            real_ids += list(a.sample_id)
            padded_ids += list(b.sample_id)[: b.num_real_graphs]
            assert torch.equal(b.y[: b.num_real_graphs], a.y) and bool(torch.isnan(b.y[b.num_real_graphs :]).all())
        assert 1 <= len(shapes) <= 3 and padded_ids == real_ids and len(real_ids) > 100
