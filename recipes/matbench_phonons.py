"""SA-GNN recipe: last phonon DOS peak (cm^-1) of 1,265 crystals (matbench_phonons).

    python recipes/matbench_phonons.py [fit|validate|test|predict] [--config my.yaml] [--model.* --data.* --trainer.*]

Defaults: ``configs/sagnn.yaml`` then ``configs/matbench_phonons.yaml``; no subcommand means ``fit``.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("matbench_phonons", [CONFIGS / "sagnn.yaml", CONFIGS / "matbench_phonons.yaml"])
