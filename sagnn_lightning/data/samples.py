"""Bundled sample datasets (shipped inside the package) for the offline quickstart.

A sample is addressed as ``data_file="sample:<name>"`` (YAML friendly) or through
:meth:`CrystalDataModule.from_sample` with a *preset* name that also fixes the target, e.g.
``"mp_abx3_band_gap"``. See ``samples/ATTRIBUTION.md`` for sources and licences.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SAMPLE_PREFIX = "sample:"


@dataclass(frozen=True)
class Sample:
    """One bundled data file.

    Attributes:
        file: file name inside ``sagnn_lightning/data/samples/``.
        id_column, structure_column: columns of the table.
        target_columns: default targets when none are given.
        units: unit of every numeric column usable as a target.
        description: one line (rows, content, licence).
    """

    file: str
    id_column: str
    structure_column: str
    target_columns: tuple[str, ...]
    units: dict[str, str]
    description: str


SAMPLES: dict[str, Sample] = {
    "mp_abx3_perovskites": Sample(
        file="mp_abx3_perovskites.csv.gz",
        id_column="material_id",
        structure_column="cif",
        target_columns=("band_gap",),
        units={"band_gap": "eV", "formation_energy_per_atom": "eV/atom", "energy_above_hull": "eV/atom"},
        description="1,784 five-atom ABX3 perovskites from the Materials Project (CC BY 4.0, via OPTIMADE)",
    ),
}

#: preset name → (sample, target columns)
PRESETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mp_abx3_band_gap": ("mp_abx3_perovskites", ("band_gap",)),
    "mp_abx3_formation_energy": ("mp_abx3_perovskites", ("formation_energy_per_atom",)),
    "mp_abx3_energy_above_hull": ("mp_abx3_perovskites", ("energy_above_hull",)),
}


def is_sample_ref(data_file: str | Path | None) -> bool:
    """True for ``"sample:<name>"``."""
    return isinstance(data_file, str) and data_file.startswith(SAMPLE_PREFIX)


def get_sample(name: str) -> Sample:
    """The :class:`Sample` called ``name`` (with or without the ``sample:`` prefix)."""
    if name.startswith(SAMPLE_PREFIX):
        name = name[len(SAMPLE_PREFIX) :]
    if name not in SAMPLES:
        raise KeyError(
            f"unknown sample {name!r}; bundled samples: {sorted(SAMPLES)} (presets for from_sample: {sorted(PRESETS)})."
        )
    return SAMPLES[name]


def sample_path(name: str) -> Path:
    """Path of the bundled file of sample ``name`` (inside the installed package)."""
    sample = get_sample(name)
    ref = resources.files("sagnn_lightning.data").joinpath("samples").joinpath(sample.file)
    path = Path(str(ref))
    if not path.is_file():
        raise FileNotFoundError(f"bundled sample file {path} is missing; reinstall sagnn-lightning.")
    return path


def resolve_preset(name: str) -> tuple[str, list[str]]:
    """Preset or sample name → (``"sample:<name>"``, target columns)."""
    if name in PRESETS:
        sample, targets = PRESETS[name]
        return SAMPLE_PREFIX + sample, list(targets)
    found = get_sample(name)
    key = name[len(SAMPLE_PREFIX) :] if name.startswith(SAMPLE_PREFIX) else name
    return SAMPLE_PREFIX + key, list(found.target_columns)
