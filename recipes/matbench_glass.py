"""Composition SA-GNN recipe: does the alloy form a metallic glass (classification), 5,680 compositions (matbench_glass).

    python recipes/matbench_glass.py [fit|validate|test|predict] [--config my.yaml] [--model.* --data.* --trainer.*]

Defaults: ``configs/composition.yaml`` then ``configs/matbench_glass.yaml``; no subcommand means ``fit``.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("matbench_glass", [CONFIGS / "composition.yaml", CONFIGS / "matbench_glass.yaml"])
