"""``python -m sagnn_lightning models [NAME ...]``: the pretrained models shipped with the package."""

from __future__ import annotations

import os

from sagnn_lightning.lit.registry import available, card


def models_main(argv: list[str], models_dir: str | os.PathLike | None = None) -> int:
    """``python -m sagnn_lightning models [NAME ...]``: one line per model, or the full cards of ``NAME``s."""
    if any(a.startswith("-") for a in argv):
        print("usage: python -m sagnn_lightning models [NAME ...]  (no NAME: one line per model)")
        return 0 if set(argv) <= {"-h", "--help"} else 2
    if not argv:
        models = available(models_dir)
        width = max((len(n) for n in models), default=0)
        for name, summary in models.items():
            print(f"{name:<{width}}  {summary}")
        return 0
    print("\n\n".join(card(name, models_dir).render() for name in argv))
    return 0


__all__ = ["models_main"]
