"""The ablation YAMLs of issue 4 stack on a recipe and build the intended model."""

from __future__ import annotations

import pytest

from sagnn_lightning.models import SAGNN
from tests.lit.test_cli import RECIPES, _print_config

ABLATIONS = {
    "sagnn_heads8": {"heads": 8, "attention": "last"},
    "heads4": {"heads": 4, "attention": "last"},
    "heads16": {"heads": 16, "attention": "last"},
    "attention_each": {"heads": 8, "attention": "each"},
    "no_mhsa": {"attention": "none"},
    "megnet": {"attention": "none"},
}


def test_every_ablation_yaml_is_listed():
    assert {p.stem for p in (RECIPES / "configs" / "ablation").glob("*.yaml")} == set(ABLATIONS)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_yaml_stacks_on_a_recipe(name, capsys):
    configs = [RECIPES / "configs" / "sagnn.yaml", RECIPES / "configs" / "matbench_perovskites.yaml"]
    printed = _print_config(
        ["fit", "--config", str(RECIPES / "configs" / "ablation" / f"{name}.yaml")], configs, capsys
    )
    init_args = printed["model"]["model"]["init_args"]
    for key, value in ABLATIONS[name].items():
        assert init_args[key] == value, (name, key, init_args[key])
    model = SAGNN(**init_args)
    assert (len(model.attention_layers) == 0) == (init_args["attention"] == "none")
