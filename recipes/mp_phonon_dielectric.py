"""SA-GNN multitask recipe: eps_electronic, eps_total and last_phdos_peak of 1,296 Materials Project crystals.

    python recipes/mp_phonon_dielectric.py --data.data_file=../shared/data/mp_phonon_dielectric/mp_phonon_dielectric.csv.gz \
        [fit|validate|test|predict] [--config my.yaml] [--model.loss_weights=[1,1,2]] [--model.* --data.* --trainer.*]

Defaults: ``configs/sagnn.yaml`` then ``configs/mp_phonon_dielectric.yaml`` (the dielectric constants learned as
logs, per-target standardisation, equal loss weights); no subcommand means ``fit``. See docs/guide/multitask.md.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("mp_phonon_dielectric", [CONFIGS / "sagnn.yaml", CONFIGS / "mp_phonon_dielectric.yaml"])
