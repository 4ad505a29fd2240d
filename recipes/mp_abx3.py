"""SA-GNN multitask recipe: formation energy, band gap and energy above hull of 1,784 MP ABX3 perovskites.

    python recipes/mp_abx3.py --data.data_file=../shared/data/mp_abx3/mp_abx3_perovskites.csv.gz \
        [fit|validate|test|predict] [--config my.yaml] [--model.loss_weights=[1,2,1]] [--model.* --data.* --trainer.*]

Defaults: ``configs/sagnn.yaml`` then ``configs/mp_abx3.yaml`` (per-target standardisation, no transform, equal
loss weights); no subcommand means ``fit``. See docs/guide/multitask.md.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("mp_abx3", [CONFIGS / "sagnn.yaml", CONFIGS / "mp_abx3.yaml"])
