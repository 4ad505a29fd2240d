"""``benchmarks/multitask_study.py``: its folds (a partition of the table, nested training fractions), one real run
of a recipe as the study types it (a single log target, the metal row left out of the MAE in units), and the
paired summary, checked against numbers computed here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from tests.lit.conftest import TINY_MODEL_YAML
from tests.scripts import load_script

study = load_script("benchmarks/multitask_study.py")
ABX3 = study.DATASETS["mp_abx3"]
DIELECTRIC = study.DATASETS["mp_phonon_dielectric"]


@pytest.mark.skipif(not ABX3.data.is_file(), reason=f"no {ABX3.data}")
def test_folds_partition_the_table_and_fractions_nest(tmp_path):
    study.write_folds(ABX3, tmp_path)
    table = pd.read_csv(ABX3.data)
    tests = []
    for fold in range(study.N_FOLDS):
        folder = tmp_path / "mp_abx3" / f"fold{fold}"
        test = set(pd.read_csv(folder / "test.csv").material_id)
        train = {f: set(pd.read_csv(folder / f"train_f{f:g}.csv").material_id) for f in study.FRACTIONS}
        assert not test & train[1.0] and len(test) + len(train[1.0]) == len(table)
        assert train[0.25] < train[0.5] < train[1.0]
        assert len(train[0.25]) == round(0.25 * len(train[1.0]))
        tests.append(test)
    assert set().union(*tests) == set(table.material_id) and sum(map(len, tests)) == len(table)


@pytest.mark.skipif(not DIELECTRIC.data.is_file(), reason=f"no {DIELECTRIC.data}")
def test_one_single_target_run_as_typed(tmp_path):
    """A single-target ``eps_electronic`` run (log transform, a unit-less target) of the recipe, 1 epoch, tiny
    model; its MAE in units leaves out the metal row, its ``mae_ln`` keeps it."""
    table = pd.read_csv(DIELECTRIC.data)
    metal = table[table.material_id.isin(study.EVAL_EXCLUDED)]
    small = pd.concat([table.head(60), metal])
    data = tmp_path / "small.csv"
    small.to_csv(data, index=False)
    dataset = dataclasses.replace(DIELECTRIC, data=data)
    work = tmp_path / "work"
    study.write_folds(dataset, work)
    fold = next(
        f
        for f in range(study.N_FOLDS)
        if metal.material_id.iloc[0] in set(pd.read_csv(work / dataset.name / f"fold{f}" / "test.csv").material_id)
    )
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY_MODEL_YAML)
    (row,) = study.run_one(dataset, fold, 1.0, "eps_electronic", work, 1, ["--config", str(tiny)], timeout=300)
    preds = pd.read_csv(work / dataset.name / f"fold{fold}" / "runs" / "f1" / "eps_electronic" / "test_predictions.csv")
    assert list(preds.columns) == ["id", "prediction"]
    truth = small.set_index("material_id").loc[preds.id, "eps_electronic"].to_numpy()
    kept = ~preds.id.isin(study.EVAL_EXCLUDED).to_numpy()
    assert row["model"] == "single" and row["target"] == "eps_electronic" and row["test_rows"] == kept.sum()
    assert row["mae"] == pytest.approx(np.abs(preds.prediction.to_numpy() - truth)[kept].mean())
    assert row["mae_ln"] == pytest.approx(np.abs(np.log(preds.prediction.to_numpy()) - np.log(truth)).mean())
    assert row["seconds_per_epoch"] > 0


def test_summary_pairs_the_folds(tmp_path):
    rng = np.random.default_rng(0)
    single, multi = rng.uniform(1, 2, 5), rng.uniform(1, 2, 5)
    rows = [
        {
            "dataset": "d",
            "fold": f,
            "fraction": 1.0,
            "train_rows": 100 + f,
            "model": m,
            "target": "t",
            "unit": "eV",
            "mae": v[f],
        }
        for f in range(5)
        for m, v in (("single", single), ("multitask", multi))
    ]
    (summary,) = study.summarize(pd.DataFrame(rows)).to_dict("records")
    diff = multi - single
    assert summary["folds"] == 5 and summary["train_rows_mean"] == 102
    assert summary["single_mae"] == pytest.approx(single.mean()) and summary["multitask_std"] == pytest.approx(
        multi.std(ddof=1)
    )
    assert summary["diff_mean"] == pytest.approx(diff.mean()) and summary["diff_std"] == pytest.approx(diff.std(ddof=1))
    assert summary["multitask_wins"] == int((diff < 0).sum())
    assert summary["diff_percent"] == pytest.approx(100 * diff.mean() / single.mean())
    table = study.markdown(study.summarize(pd.DataFrame(rows))).splitlines()
    assert len(table) == 3 and table[2].startswith("| d | t (eV) | 102 |")
    assert (
        f"{diff.mean():+.3g} ± {diff.std(ddof=1):.2g}" in table[2] and f"{int((diff < 0).sum())} of 5 folds" in table[2]
    )
    study.plot(pd.DataFrame(rows).assign(dataset=ABX3.name, target=ABX3.targets[0]), ABX3, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
