"""SA-GNN recipe: metal / non-metal classification of 106,113 MP crystals (matbench_mp_is_metal).

    python recipes/matbench_is_metal.py [fit|validate|test|predict] [--config my.yaml] [--model.* --data.* --trainer.*]

Defaults: ``configs/sagnn.yaml`` then ``configs/matbench_mp_is_metal.yaml``; no subcommand means ``fit``.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("matbench_mp_is_metal", [CONFIGS / "sagnn.yaml", CONFIGS / "matbench_mp_is_metal.yaml"])
