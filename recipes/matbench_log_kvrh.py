"""SA-GNN recipe: log10 bulk modulus (log10 GPa) of 10,987 crystals (matbench_log_kvrh).

    python recipes/matbench_log_kvrh.py [fit|validate|test|predict] [--config my.yaml] [--model.* --data.* --trainer.*]

Defaults: ``configs/sagnn.yaml`` then ``configs/matbench_log_kvrh.yaml``; no subcommand means ``fit``.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("matbench_log_kvrh", [CONFIGS / "sagnn.yaml", CONFIGS / "matbench_log_kvrh.yaml"])
