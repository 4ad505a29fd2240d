"""SA-GNN recipe: formation energy (eV/atom) of 132,752 Materials Project crystals (matbench_mp_e_form).

    python recipes/matbench_e_form.py [fit|validate|test|predict] [--config my.yaml] [--model.* --data.* --trainer.*]

Defaults: ``configs/sagnn.yaml`` then ``configs/matbench_mp_e_form.yaml``; no subcommand means ``fit``.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

CONFIGS = Path(__file__).resolve().parent / "configs"

if __name__ == "__main__":
    recipe_main("matbench_mp_e_form", [CONFIGS / "sagnn.yaml", CONFIGS / "matbench_mp_e_form.yaml"])
