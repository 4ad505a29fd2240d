"""The committed blind-test predictions of matbench_perovskites fold 0: every test crystal once, in matbench's order,
and the ensemble's file equal to what the shipped ``matbench_perovskites`` ensemble predicts now."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sagnn_lightning import pretrained
from tests.lit.conftest import REPO, SHARED

RESULTS = REPO / "benchmarks" / "results"
TEST_INPUTS = SHARED / "matbench" / "matbench_perovskites_fold0_test_inputs.csv.gz"
FILES = ["", "_heads4", "_heads16", "_final"]


@pytest.mark.shared_data
@pytest.mark.parametrize("suffix", FILES)
def test_every_fold0_test_crystal_once_in_matbench_order(suffix):
    if not TEST_INPUTS.is_file():
        pytest.skip(f"no {TEST_INPUTS}")
    frame = pd.read_csv(RESULTS / f"matbench_perovskites_fold0_test_predictions{suffix}.csv")
    assert frame.mbid.tolist() == pd.read_csv(TEST_INPUTS).mbid.tolist()
    assert np.isfinite(frame.prediction).all()


@pytest.mark.shared_data
def test_the_ensemble_file_is_what_the_shipped_ensemble_predicts():
    if not TEST_INPUTS.is_file():
        pytest.skip(f"no {TEST_INPUTS}")
    frame = pd.read_csv(RESULTS / "matbench_perovskites_fold0_test_predictions_final.csv")
    assert list(frame.columns) == ["mbid", "prediction", "std", "lower_95", "upper_95"]
    assert (frame["std"] > 0).all() and (frame.lower_95 < frame.prediction).all()
    assert (frame.prediction < frame.upper_95).all()
    rows = pd.read_csv(TEST_INPUTS).iloc[::500]  # 8 crystals across the file
    result = pretrained.load("matbench_perovskites").predict(rows.cif.tolist())
    committed = frame.set_index("mbid").loc[rows.mbid]
    np.testing.assert_allclose(result.prediction, committed.prediction, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.std, committed["std"], rtol=1e-4, atol=1e-6)
    single = pd.read_csv(RESULTS / "matbench_perovskites_fold0_test_predictions.csv").set_index("mbid").loc[rows.mbid]
    np.testing.assert_allclose(result.members[0], single.prediction, rtol=1e-5, atol=1e-6)  # member 0 = that model
