"""Matbench v0.1 task metadata: the task table, name lookup and the task type shared by the DataModules and
the LightningModule (no imports from the rest of the package, so every layer can use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sagnn_lightning.errors import UsageError

#: what a target is: a real number (MAE/RMSE/R²) or a 0/1 label (ROC-AUC/accuracy)
TaskType = Literal["regression", "classification"]

#: matbench v0.1 folds per task (KFold 5; the ids are in matbench's validation file)
NUM_FOLDS = 5


@dataclass(frozen=True)
class MatbenchTask:
    """Metadata of one matbench v0.1 structure task.

    Attributes:
        name: ``matbench_<...>``.
        target: target column in the dataset.
        unit: target unit (``None`` for classification).
        task_type: ``"regression"`` or ``"classification"``.
        n_samples: rows in the full task.
    """

    name: str
    target: str
    unit: str | None
    task_type: TaskType
    n_samples: int


#: the 9 structure tasks of matbench v0.1 (8 regression, 1 classification)
MATBENCH_TASKS: dict[str, MatbenchTask] = {
    t.name: t
    for t in (
        MatbenchTask("matbench_dielectric", "n", "unitless", "regression", 4764),
        MatbenchTask("matbench_jdft2d", "exfoliation_en", "meV/atom", "regression", 636),
        MatbenchTask("matbench_log_gvrh", "log10(G_VRH)", "log10(GPa)", "regression", 10987),
        MatbenchTask("matbench_log_kvrh", "log10(K_VRH)", "log10(GPa)", "regression", 10987),
        MatbenchTask("matbench_mp_e_form", "e_form", "eV/atom", "regression", 132752),
        MatbenchTask("matbench_mp_gap", "gap pbe", "eV", "regression", 106113),
        MatbenchTask("matbench_mp_is_metal", "is_metal", None, "classification", 106113),
        MatbenchTask("matbench_perovskites", "e_form", "eV/unit cell", "regression", 18928),
        MatbenchTask("matbench_phonons", "last phdos peak", "cm^-1", "regression", 1265),
    )
}

#: composition-only tasks of matbench v0.1 (no crystal structure: not supported by a graph model yet)
MATBENCH_COMPOSITION_TASKS: tuple[str, ...] = (
    "matbench_expt_gap",
    "matbench_expt_is_metal",
    "matbench_glass",
    "matbench_steels",
)


class UnsupportedTaskError(UsageError, NotImplementedError):
    """A composition-only matbench task (no structures)."""


def get_task(name: str) -> MatbenchTask:
    """Task metadata by name (``"matbench_jdft2d"`` or ``"jdft2d"``).

    Raises:
        UnsupportedTaskError: composition-only task (a ``NotImplementedError``).
        UsageError: unknown task (a ``ValueError``; the message lists the valid ones).
    """
    full = name if name.startswith("matbench_") else f"matbench_{name}"
    if full in MATBENCH_TASKS:
        return MATBENCH_TASKS[full]
    if full in MATBENCH_COMPOSITION_TASKS:
        raise UnsupportedTaskError(
            f"--data.task={name}: {full} is a composition-only matbench task (no crystal structures); "
            "SA-GNN needs structures, "
            f"so it is not supported yet. Structure tasks: {', '.join(sorted(MATBENCH_TASKS))}."
        )
    raise UsageError(
        f"unknown matbench task {name!r} (--data.task); valid structure tasks: {', '.join(sorted(MATBENCH_TASKS))}."
    )
