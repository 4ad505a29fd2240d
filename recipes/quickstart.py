"""SA-GNN quickstart: band gaps of the Materials Project perovskites bundled with the package (offline, CPU).

    python recipes/quickstart.py fit --config recipes/quickstart.yaml

Defaults: ``configs/sagnn.yaml`` then ``quickstart.yaml``; no subcommand means ``fit``.
"""

from pathlib import Path

from sagnn_lightning.cli import recipe_main

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    recipe_main("quickstart", [HERE / "configs" / "sagnn.yaml", HERE / "quickstart.yaml"])
