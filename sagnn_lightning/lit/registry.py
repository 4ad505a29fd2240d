"""The registry of pretrained models shipped inside the package: names, model cards, files and checksums.

Each model is two files in ``sagnn_lightning/lit/pretrained_models/``: ``<name>.ckpt`` (a Lightning checkpoint
without optimizer state: weights, the training config, the graph settings) and ``<name>.json`` (its card:
training data with citation and licence, target and unit, cutoff and full config, validation MAE, matbench
score, package version, the sha256 of the ``.ckpt`` and the command that trained it).

* :func:`available` → ``{name: one-line summary}``; :func:`card` → :class:`ModelCard`;
* :func:`checkpoint_file` → the ``.ckpt`` after its sha256 was checked against the card.

An unknown name or a checksum mismatch raises :class:`PretrainedError` (one line that lists the names). A leaf:
it reads files and imports nothing of the training code; :mod:`sagnn_lightning.lit.pretrained` loads the models.
``scripts/export_pretrained.py`` makes the two files from a training run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sagnn_lightning.errors import SAGNNError

#: folder of the shipped ``<name>.ckpt`` + ``<name>.json`` pairs
MODELS_DIR = Path(__file__).resolve().parent / "pretrained_models"


class PretrainedError(SAGNNError):
    """Unknown pretrained model name, missing file or checksum mismatch."""


@dataclass(frozen=True)
class ModelCard:
    """What a shipped model is, how it was trained and how good it is (read from ``<name>.json``).

    Attributes:
        name: the model's name (``load(name)``, ``predict --model name``).
        summary: one line: target, unit, data, score.
        target: the predicted property (e.g. ``"formation energy"``).
        unit: unit of the predictions (e.g. ``"eV/cell"``).
        per: ``"atom"`` or ``"cell"`` (intensive per atom, or per unit cell as in the data).
        training_data: the rows it was trained on.
        citation: the data's reference(s).
        licence: the data's licence.
        cutoff: neighbour cutoff (Å) of its graphs.
        config: the full training config (model, optimizer, scheduler, data, trainer).
        validation_mae: MAE on the validation rows carved from the training data (``unit``).
        validation_rows: how many rows validated.
        best_epoch: epoch (1-based) of the kept weights.
        epochs: epochs trained.
        matbench: the matbench score where one exists (e.g. the 5-fold mean of this configuration), with a note.
        package_version: the sagnn-lightning version that trained it.
        sha256: checksum of ``<name>.ckpt``.
        command: the command that trained it (run from the repository root).
        file: the checkpoint's file name.
    """

    name: str
    summary: str
    target: str
    unit: str
    per: str
    training_data: str
    citation: str
    licence: str
    cutoff: float
    config: dict[str, Any]
    validation_mae: float
    validation_rows: int
    best_epoch: int
    epochs: int
    matbench: dict[str, Any]
    package_version: str
    sha256: str
    command: str
    file: str
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        return cls(
            **{k: v for k, v in data.items() if k in known}, extra={k: v for k, v in data.items() if k not in known}
        )

    def to_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "extra"}
        return {**out, **self.extra}

    def _ensemble_lines(self) -> list[str]:
        members = self.extra.get("members")
        if not members:
            return []
        lines = [
            f"  ensemble: {len(members)} members (validation MAE of their mean above; fine-tuning starts from the first)"
        ]
        calibration = self.extra.get("calibration")
        if calibration:
            lines.append(
                f"  calibration: σ x{calibration['scale']:.4g} and conformal 95 % multiplier "
                f"{calibration['conformal'].get('95')} of the members' spread, fit on {calibration['n']} held-out rows"
            )
        metrics = self.extra.get("validation_calibration")
        if metrics:
            lines.append(
                f"  on the validation rows: mean z² {metrics['mean_z2']:.3g}, 95 % coverage {metrics['coverage_95']:.3f}, "
                f"Spearman ρ(|error|, σ) {metrics['spearman']:.3f}"
            )
        return lines

    def render(self) -> str:
        """The card as text (``python -m sagnn_lightning models <name>``)."""
        score = ", ".join(f"{k}: {v}" for k, v in self.matbench.items()) or "none"
        lines = [
            f"{self.name}: {self.summary}",
            f"  target: {self.target} [{self.unit}] (per {self.per})",
            f"  training data: {self.training_data}",
            f"  citation: {self.citation}",
            f"  licence: {self.licence}",
            f"  cutoff: {self.cutoff} Å",
            f"  validation MAE: {self.validation_mae:.4g} {self.unit} on {self.validation_rows} rows "
            f"(best epoch {self.best_epoch} of {self.epochs})",
            f"  matbench: {score}",
            f"  trained with sagnn-lightning {self.package_version}: {self.command}",
            f"  weights: {self.file}, sha256 {self.sha256}",
            *self._ensemble_lines(),
            "  config:",
            *("    " + line for line in json.dumps(self.config, indent=2, sort_keys=True).splitlines()),
        ]
        return "\n".join(lines)


def _folder(models_dir: str | os.PathLike | None) -> Path:
    return Path(models_dir) if models_dir is not None else MODELS_DIR


def _names(models_dir: Path) -> list[str]:
    return sorted(p.stem for p in models_dir.glob("*.json")) if models_dir.is_dir() else []


def _unknown(name: str, models_dir: Path) -> PretrainedError:
    names = _names(models_dir)
    return PretrainedError(
        f"unknown pretrained model {name!r}; available: {', '.join(names) or 'none'} "
        "(python -m sagnn_lightning models lists them)"
    )


def card(name: str, models_dir: str | os.PathLike | None = None) -> ModelCard:
    """The card of model ``name`` (:class:`PretrainedError` for an unknown name). ``NAME/member_<j>`` names one
    member of a shipped ensemble: its card is the ensemble's, for that member's file alone (no members, no
    calibration; the member's own validation MAE)."""
    folder = _folder(models_dir)
    base, member = split_member_name(name)
    if member is not None:
        return _member_card(card(base, folder), member)
    path = folder / f"{name}.json"
    if "/" in name or os.sep in name or not path.is_file():
        raise _unknown(name, folder)
    return ModelCard.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _member_card(ensemble: ModelCard, member: int) -> ModelCard:
    members = ensemble.extra.get("members") or []
    if member >= len(members):
        raise PretrainedError(
            f"pretrained model {ensemble.name!r} has {len(members) or 'no'} ensemble members"
            + (f" (member_0 to member_{len(members) - 1})" if members else "")
            + f"; member_{member} is not one of them"
        )
    entry = members[member]
    data = {
        k: v for k, v in ensemble.to_dict().items() if k not in ("members", "calibration", "validation_calibration")
    }
    data.update(
        name=f"{ensemble.name}/member_{member}",
        summary=f"member {member} of the {len(members)}-member {ensemble.name} ensemble: {ensemble.target} "
        f"[{ensemble.unit}]",
        file=entry["file"],
        sha256=entry["sha256"],
        validation_mae=entry.get("validation_mae", ensemble.validation_mae),
    )
    return ModelCard.from_dict(data)


def available(models_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """``{name: one-line summary}`` of every shipped model, sorted by name."""
    folder = _folder(models_dir)
    return {name: card(name, folder).summary for name in _names(folder)}


def split_member_name(value: str) -> tuple[str, int | None]:
    """``"NAME/member_<j>"`` (one member of a shipped ensemble) → ``("NAME", j)``; anything else → ``(value, None)``."""
    name, slash, member = value.partition("/")
    if slash and member.startswith("member_") and member[len("member_") :].isdigit():
        return name, int(member[len("member_") :])
    return value, None


def is_pretrained_name(value: str, models_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``value`` names a shipped model, or one member of a shipped ensemble as ``NAME/member_<j>`` (and is
    not an existing path)."""
    folder = _folder(models_dir)
    name, _ = split_member_name(value)
    return name in _names(folder) and not Path(value).exists()


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_file(name: str, models_dir: str | os.PathLike | None = None) -> Path:
    """The ``.ckpt`` of model ``name`` after checking its sha256 against the card: of an ensemble its first member
    (where fine-tuning starts), or member ``j`` for ``NAME/member_<j>``.

    Raises:
        PretrainedError: unknown name or member, missing weights, or a checksum mismatch (a damaged install).
    """
    folder = _folder(models_dir)
    info = card(name, folder)
    return _checked_file(split_member_name(name)[0], folder, info.file, info.sha256)


def member_files(name: str, models_dir: str | os.PathLike | None = None) -> list[Path]:
    """The members' ``.ckpt`` files of ensemble ``name`` (card ``members``: ``file`` + ``sha256`` each), checked;
    ``[checkpoint_file(name)]`` for a single model."""
    folder = _folder(models_dir)
    info = card(name, folder)
    members = info.extra.get("members")
    if not members:
        return [checkpoint_file(name, folder)]
    return [_checked_file(name, folder, m["file"], m["sha256"]) for m in members]


def _checked_file(name: str, folder: Path, file: str, sha256: str) -> Path:
    path = folder / file
    if not path.is_file():
        raise PretrainedError(
            f"pretrained model {name!r}: weights {path} are missing; reinstall sagnn-lightning "
            f"(available: {', '.join(_names(folder))})"
        )
    digest = sha256_of(path)
    if digest != sha256:
        raise PretrainedError(
            f"pretrained model {name!r}: checksum mismatch for {path} (sha256 {digest[:12]}..., card says "
            f"{sha256[:12]}...); the file is damaged, reinstall sagnn-lightning "
            f"(available: {', '.join(_names(folder))})"
        )
    return path


__all__ = [
    "MODELS_DIR",
    "ModelCard",
    "PretrainedError",
    "available",
    "card",
    "checkpoint_file",
    "is_pretrained_name",
    "member_files",
    "sha256_of",
    "split_member_name",
]
