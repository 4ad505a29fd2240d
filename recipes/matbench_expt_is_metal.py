"""Composition SA-GNN recipe: is the compound a metal (classification), 4,921 compositions (matbench_expt_is_metal).

    python recipes/matbench_expt_is_metal.py [fit|validate|test|predict] [--config my.yaml] [--model.* --data.* --trainer.*]

Defaults: ``configs/composition.yaml`` then ``configs/matbench_expt_is_metal.yaml``; no subcommand means ``fit``.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("matbench_expt_is_metal", [CONFIGS / "composition.yaml", CONFIGS / "matbench_expt_is_metal.yaml"])
