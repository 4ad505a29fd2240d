"""SA-GNN recipe: exfoliation energy (meV/atom) of 636 2D materials (matbench_jdft2d).

    python recipes/matbench_jdft2d.py [fit|validate|test|predict] [--config my.yaml] [--model.* --data.* --trainer.*]

Defaults: ``configs/sagnn.yaml`` then ``configs/matbench_jdft2d.yaml``; no subcommand means ``fit``.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("matbench_jdft2d", [CONFIGS / "sagnn.yaml", CONFIGS / "matbench_jdft2d.yaml"])
