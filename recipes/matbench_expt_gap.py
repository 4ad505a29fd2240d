"""Composition SA-GNN recipe: experimental band gap (eV) of 4,604 compositions (matbench_expt_gap).

    python recipes/matbench_expt_gap.py [fit|validate|test|predict] [--config my.yaml] [--model.* --data.* --trainer.*]

Defaults: ``configs/composition.yaml`` then ``configs/matbench_expt_gap.yaml``; no subcommand means ``fit``.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("matbench_expt_gap", [CONFIGS / "composition.yaml", CONFIGS / "matbench_expt_gap.yaml"])
