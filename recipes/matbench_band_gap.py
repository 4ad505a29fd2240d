"""SA-GNN recipe: PBE band gap (eV) of 106,113 Materials Project crystals (matbench_mp_gap).

    python recipes/matbench_band_gap.py [fit|validate|test|predict] [--config my.yaml] [--model.* --data.* --trainer.*]

Defaults: ``configs/sagnn.yaml`` then ``configs/matbench_mp_gap.yaml``; no subcommand means ``fit``.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("matbench_mp_gap", [CONFIGS / "sagnn.yaml", CONFIGS / "matbench_mp_gap.yaml"])
