"""CompositionSAGNN: physics of formulas (order, scaling, dopant continuity, batching) on real matbench formulas."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from sagnn_lightning.data import collate_graphs, composition_to_graph
from sagnn_lightning.models import SAGNN, CompositionSAGNN

MATBENCH = (Path(__file__).resolve().parents[2] / "../shared/data/matbench").resolve()
#: real formulas of the four composition tasks (expt_gap, glass, steels), 1 to 14 elements
FORMULAS = [
    "Ag(AuS)2",
    "Al(NiB)2",
    "Fe0.620C0.000953Mn0.000521Si0.00102Cr0.000110Ni0.192Mo0.0176V0.000112Nb0.0000616Co0.146Al0.00318Ti0.0185",
    "LiFePO4",
    "Si",
    "Cu46Zr46Al8",
]
TOL = {"rtol": 1e-9, "atol": 1e-10}


def make_model(attention: str = "last", seed: int = 0, **kwargs) -> CompositionSAGNN:
    torch.manual_seed(seed)
    model = CompositionSAGNN(num_targets=2, attention=attention, attention_backend="torch", **kwargs).double().eval()
    with torch.no_grad():  # spread the readout so that differences would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def predict(model: CompositionSAGNN, formulas) -> torch.Tensor:
    with torch.no_grad():
        return model(collate_graphs([composition_to_graph(f) for f in formulas]))


@pytest.mark.parametrize("attention", ["last", "each", "none"])
def test_invariant_to_the_order_of_the_elements(attention: str) -> None:
    model = make_model(attention)
    reordered = ["S2AgAu2", "B2Ni2Al", None, "O4PFeLi", "Si", "Al8Zr46Cu46"]
    base = predict(model, FORMULAS)
    # also a permuted node order inside the graph itself (not only a reordered formula)
    g = composition_to_graph(FORMULAS[2])
    perm = torch.randperm(g.num_nodes, generator=torch.Generator().manual_seed(1))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    g.atomic_numbers, g.fractions = g.atomic_numbers[perm], g.fractions[perm]
    g.edge_index = inverse[g.edge_index]
    with torch.no_grad():
        torch.testing.assert_close(model(collate_graphs([g])), base[2:3], **TOL)
    for k, formula in enumerate(reordered):
        if formula is not None:
            torch.testing.assert_close(predict(model, [formula]), base[k : k + 1], **TOL)


def test_invariant_to_scaling_the_formula() -> None:
    model = make_model()
    torch.testing.assert_close(predict(model, ["Fe2O3"]), predict(model, ["Fe4O6"]), **TOL)
    torch.testing.assert_close(predict(model, ["Cu46Zr46Al8"]), predict(model, ["Cu0.46Zr0.46Al0.08"]), **TOL)
    assert not torch.allclose(predict(model, ["Fe2O3"]), predict(model, ["Fe3O4"]))


@pytest.mark.parametrize("attention", ["last", "none"])
def test_a_vanishing_dopant_approaches_the_undoped_prediction(attention: str) -> None:
    model = make_model(attention)
    undoped = predict(model, [{"Fe": 2.0, "O": 3.0}])
    gaps = [
        (predict(model, [{"Fe": 2.0, "O": 3.0, "Mn": eps}]) - undoped).abs().max().item()
        for eps in (1e-1, 1e-3, 1e-5, 1e-7, 1e-9)
    ]
    assert gaps[0] > 1e-6  # the dopant matters at 10 %...
    assert all(b < a for a, b in zip(gaps, gaps[1:]))  # ...less and less as it vanishes...
    assert gaps[-1] < 1e-6 * gaps[0]  # ...and not at all in the limit (linear in eps: 1e-9 / 1e-1 = 1e-8)


def test_batched_equals_one_by_one() -> None:
    model = make_model("each")
    batched = predict(model, FORMULAS)
    single = torch.cat([predict(model, [f]) for f in FORMULAS])
    torch.testing.assert_close(batched, single, **TOL)


def test_attention_is_used_and_the_ablation_has_none() -> None:
    with_attention, without = make_model("last"), make_model("none")
    assert len(with_attention.attention_layers) == 1 and len(without.attention_layers) == 0
    # removing the attention layer's output changes the prediction: the attention is in the path
    torch.manual_seed(0)
    model = make_model("last")
    base = predict(model, FORMULAS)
    with torch.no_grad():
        model.attention_layers[0].out_proj.weight.mul_(3.0)
    assert not torch.allclose(predict(model, FORMULAS), base)


def test_gradients_are_finite_and_match_finite_differences() -> None:
    model = make_model(num_blocks=1, hidden_dim=8, heads=2, message_hidden=(8,), pool_hidden=(8,), readout_hidden=(8,))
    batch = collate_graphs([composition_to_graph(f) for f in ("Fe2O3", "LiFePO4")])
    batch.fractions = batch.fractions.clone().requires_grad_(True)

    def f(fractions: torch.Tensor) -> torch.Tensor:
        batch.fractions = fractions
        return model(batch)

    assert torch.autograd.gradcheck(f, (batch.fractions,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("source, width", [("matscholar", 200), ("megnet", 16), ("learned", 64)])
def test_element_feature_sources(source: str, width: int) -> None:
    model = CompositionSAGNN(element_features=source)
    assert model.element_features.out_channels == width
    assert predict(model.double(), ["Fe2O3"]).shape == (1, 1)


def test_element_without_features_names_it_and_the_option() -> None:
    model = CompositionSAGNN(element_features="megnet")  # MEGNet's table ends at Pu
    with pytest.raises(ValueError, match=r"no megnet features for Cf \(Z=98\).*element_features=learned"):
        predict(model, ["CfO2"])
    # the host-side check a LightningModule runs once per dataset (training on a GPU reads nothing back per batch)
    with pytest.raises(ValueError, match=r"no megnet features for Cf \(Z=98\)"):
        model.check_elements(torch.tensor([8, 98]))
    model.check_elements(torch.tensor([8, 26]))


def test_models_refuse_the_other_kind_of_graph() -> None:
    with pytest.raises(ValueError, match="CompositionSAGNN needs composition graphs"):
        from sagnn_lightning.data import structure_to_graph
        from tests.models.physics import load_fixture_structures

        CompositionSAGNN()(collate_graphs([structure_to_graph(load_fixture_structures()[0][1])]))
    with pytest.raises(ValueError, match="SAGNN needs crystal graphs"):
        SAGNN()(collate_graphs([composition_to_graph("Fe2O3")]))


def test_real_task_formulas_all_predict() -> None:
    path = MATBENCH / "matbench_steels.json.gz"
    if not path.exists():
        pytest.skip(f"shared matbench data not found at {path}")
    with gzip.open(path, "rt") as fh:
        formulas = [row[0] for row in json.load(fh)["data"]]
    out = predict(make_model(), formulas)
    assert out.shape == (len(formulas), 2) and torch.isfinite(out).all()
