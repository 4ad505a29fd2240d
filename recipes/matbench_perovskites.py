"""SA-GNN recipe: formation energy (eV/cell) of 18,928 ABX3 perovskites (matbench_perovskites).

    python recipes/matbench_perovskites.py [fit|validate|test|predict] [--config my.yaml] [--model.* --data.* --trainer.*]

Defaults: ``configs/sagnn.yaml`` then ``configs/matbench_perovskites.yaml``; no subcommand means ``fit``.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("matbench_perovskites", [CONFIGS / "sagnn.yaml", CONFIGS / "matbench_perovskites.yaml"])
