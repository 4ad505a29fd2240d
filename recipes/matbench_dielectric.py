"""SA-GNN recipe: refractive index of 4,764 crystals (matbench_dielectric).

    python recipes/matbench_dielectric.py [fit|validate|test|predict] [--config my.yaml] [--model.* --data.* --trainer.*]

Defaults: ``configs/sagnn.yaml`` then ``configs/matbench_dielectric.yaml``; no subcommand means ``fit``.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("matbench_dielectric", [CONFIGS / "sagnn.yaml", CONFIGS / "matbench_dielectric.yaml"])
