"""Matbench v0.1 task metadata: the task table, name lookup and the task type shared by the DataModules and
the LightningModule (no imports from the rest of the package, so every layer can use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sagnn_lightning.errors import UsageError, param

#: what a target is: a real number (MAE/RMSE/R²) or a 0/1 label (ROC-AUC/accuracy)
TaskType = Literal["regression", "classification"]

#: matbench v0.1 folds per task (KFold 5; the ids are in matbench's validation file)
NUM_FOLDS = 5


#: what a task's rows give: a crystal structure or only a chemical formula
InputType = Literal["structure", "composition"]


@dataclass(frozen=True)
class MatbenchTask:
    """Metadata of one matbench v0.1 task.

    Attributes:
        name: ``matbench_<...>``.
        target: target column in the dataset.
        unit: target unit (``None`` for classification).
        task_type: ``"regression"`` or ``"classification"``.
        n_samples: rows in the full task.
        input_type: ``"structure"`` (a crystal per row) or ``"composition"`` (a formula per row); also the
            name of the input column in matbench's file.
    """

    name: str
    target: str
    unit: str | None
    task_type: TaskType
    n_samples: int
    input_type: InputType = "structure"


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

#: the 4 composition-only tasks of matbench v0.1 (a formula per row; 2 regression, 2 classification)
MATBENCH_COMPOSITION_TASKS: dict[str, MatbenchTask] = {
    t.name: t
    for t in (
        MatbenchTask("matbench_expt_gap", "gap expt", "eV", "regression", 4604, "composition"),
        MatbenchTask("matbench_expt_is_metal", "is_metal", None, "classification", 4921, "composition"),
        MatbenchTask("matbench_glass", "gfa", None, "classification", 5680, "composition"),
        MatbenchTask("matbench_steels", "yield strength", "MPa", "regression", 312, "composition"),
    )
}

#: all 13 tasks of matbench v0.1
ALL_MATBENCH_TASKS: dict[str, MatbenchTask] = {**MATBENCH_TASKS, **MATBENCH_COMPOSITION_TASKS}


def get_task(name: str) -> MatbenchTask:
    """Task metadata by name (``"matbench_jdft2d"`` or ``"jdft2d"``), structure or composition task.

    Raises:
        UsageError: unknown task (a ``ValueError``; the message lists the valid ones).
    """
    full = name if name.startswith("matbench_") else f"matbench_{name}"
    if full in ALL_MATBENCH_TASKS:
        return ALL_MATBENCH_TASKS[full]
    raise UsageError(
        f"unknown matbench task {name!r} ({param('data.task')}); valid tasks: {', '.join(sorted(ALL_MATBENCH_TASKS))}."
    )


__all__ = ["get_task"]
