"""Composition SA-GNN recipe: yield strength (MPa) of 312 steel compositions (matbench_steels).

    python recipes/matbench_steels.py [fit|validate|test|predict] [--config my.yaml] [--model.* --data.* --trainer.*]

Defaults: ``configs/composition.yaml`` then ``configs/matbench_steels.yaml``; no subcommand means ``fit``.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("matbench_steels", [CONFIGS / "composition.yaml", CONFIGS / "matbench_steels.yaml"])
