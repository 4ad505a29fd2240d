"""benchmarks/perovskite_attention_heads.py: per-head site profile, sharpness, head spread and model agreement,
on hand-made exports whose values follow from the definitions."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from sagnn_lightning.lit.attention_export import FORMAT, FORMAT_VERSION

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "perovskite_attention_heads.py"

# SrTiO3: Sr at the corner (A), Ti at the centre (B), O at the face centres (X)
LATTICE = np.eye(3) * 3.9
FRAC = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
ELEMENTS = np.array(["Sr", "Ti", "O", "O", "O"])
NUMBERS = np.array([38, 22, 8, 8, 8])


def _load():
    spec = importlib.util.spec_from_file_location("perovskite_attention_heads", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _export(folder: Path, maps: dict[str, np.ndarray]) -> Path:
    """An export with the SrTiO3 cell under each id (maps ``[H, 5, 5]``) plus one 2-atom crystal (not ABX3)."""
    folder.mkdir()
    heads = next(iter(maps.values())).shape[0]
    crystals = {}
    for sample_id, a in maps.items():
        np.savez(
            folder / f"{sample_id}.npz",
            attention=a[None],
            elements=ELEMENTS,
            atomic_numbers=NUMBERS,
            frac_coords=FRAC,
            lattice=LATTICE,
        )
        crystals[sample_id] = {"file": f"{sample_id}.npz", "n_atoms": 5}
    pair = np.full((1, heads, 2, 2), 0.5)
    np.savez(
        folder / "nacl.npz",
        attention=pair,
        elements=np.array(["Na", "Cl"]),
        atomic_numbers=np.array([11, 17]),
        frac_coords=np.array([[0, 0, 0], [0.5, 0.5, 0.5]]),
        lattice=np.eye(3) * 2.8,
    )
    crystals["nacl"] = {"file": "nacl.npz", "n_atoms": 2}
    index = {"format": FORMAT, "format_version": FORMAT_VERSION, "heads": heads}
    index |= {"layers": ["attention_layers.0"], "crystals": crystals}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def _one_hot_heads(*keys: int) -> np.ndarray:
    """``[H, 5, 5]``: head h sends every query's whole attention to atom ``keys[h]``."""
    a = np.zeros((len(keys), 5, 5))
    for h, key in enumerate(keys):
        a[h, :, key] = 1.0
    return a


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_statistics_of_one_hot_and_uniform_heads() -> None:
    heads = _load()
    stats = heads.head_statistics(_one_hot_heads(1, 0))
    np.testing.assert_allclose(stats["entropy"], [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(stats["max_weight"], [1.0, 1.0])
    np.testing.assert_allclose(stats["from_uniform"], [0.8, 0.8])  # ½ (0.8 + 4 × 0.2)
    assert float(stats["head_spread"]) == pytest.approx(1.0)  # disjoint keys
    uniform = heads.head_statistics(np.full((3, 5, 5), 0.2))
    np.testing.assert_allclose(uniform["entropy"], 1.0)
    np.testing.assert_allclose(uniform["from_uniform"], 0.0, atol=1e-12)
    assert float(uniform["head_spread"]) == 0.0
    # a random softmax: entropy strictly between 0 and 1, spread = mean pairwise ½ L1, checked by a loop
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5, 5))
    a = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    stats = heads.head_statistics(a)
    assert np.all((stats["entropy"] > 0) & (stats["entropy"] < 1))
    naive = [0.5 * abs(a[g, i] - a[h, i]).sum() for g in range(4) for h in range(g + 1, 4) for i in range(5)]
    assert float(stats["head_spread"]) == pytest.approx(np.mean(naive))
    entropy_h0 = np.mean([-(a[0, i] * np.log(a[0, i])).sum() / np.log(5) for i in range(5)])
    assert stats["entropy"][0] == pytest.approx(entropy_h0)


def test_compares_exports_of_different_head_counts(tmp_path, capsys) -> None:
    heads = _load()
    two = _export(tmp_path / "two", {"c1": _one_hot_heads(1, 0), "c2": _one_hot_heads(1, 0)})
    same = _export(tmp_path / "same", {"c1": _one_hot_heads(1, 0, 1, 0), "c2": _one_hot_heads(1, 0, 0, 1)})
    flat = _export(tmp_path / "flat", {"c1": np.full((1, 5, 5), 0.2), "c2": np.full((1, 5, 5), 0.2)})
    out = tmp_path / "res" / "heads"
    png = tmp_path / "res" / "sites.png"
    argv = [f"2={two}", f"4={same}", f"1={flat}", "--out", str(out), "--png", str(png), "--min-pairs", "1"]
    assert heads.main(argv) == 0

    models = {row["model"]: row for row in _rows(Path(f"{out}_models.csv"))}
    assert models["2"]["heads"] == "2" and models["2"]["site_crystals"] == "2" and models["2"]["left_out"] == "1"
    # head 0 all on B (5× uniform), head 1 all on A: mean of heads 2.5 each, anions get nothing
    assert float(models["2"]["site_A"]) == pytest.approx(2.5) and float(models["2"]["site_B"]) == pytest.approx(2.5)
    assert float(models["2"]["site_X"]) == 0.0 and float(models["2"]["site_A_head_max"]) == pytest.approx(5.0)
    # the NaCl crystal (uniform, 2 atoms) counts in the sharpness: (0 + 0 + 1) / 3 crystals
    assert float(models["2"]["entropy"]) == pytest.approx(1 / 3)
    assert float(models["2"]["head_spread"]) == pytest.approx(2 / 3)  # 1 in both perovskites, 0 in NaCl
    assert float(models["1"]["site_X"]) == pytest.approx(1.0) and float(models["1"]["head_spread"]) == 0.0
    # head-averaged rows: half on A, half on B in the perovskites (½ (0.3 + 0.3 + 3 × 0.2)), uniform in NaCl
    assert float(models["2"]["mean_map_from_uniform"]) == pytest.approx(0.4)
    assert float(models["1"]["mean_map_from_uniform"]) == pytest.approx(0.0, abs=1e-12)
    per_head = [r for r in _rows(Path(f"{out}_per_head.csv")) if r["model"] == "4"]
    assert [r["head"] for r in per_head] == ["0", "1", "2", "3"]
    assert float(per_head[0]["site_B"]) == pytest.approx(5.0) and float(per_head[2]["site_B"]) == pytest.approx(2.5)

    pairs = {(r["model_a"], r["model_b"]): r for r in _rows(Path(f"{out}_agreement.csv"))}
    # 2 and 4 heads: the same head-averaged maps (half on A, half on B) in every crystal
    assert float(pairs[("2", "4")]["map_distance"]) == pytest.approx(0.0, abs=1e-12)
    assert float(pairs[("2", "4")]["received_corr"]) == pytest.approx(1.0)
    assert float(pairs[("2", "4")]["element_pair_corr"]) == pytest.approx(1.0)
    # against uniform: ½ (0.3 + 0.3 + 3 × 0.2) = 0.6 in the perovskites, 0 in NaCl
    assert float(pairs[("2", "1")]["map_distance"]) == pytest.approx(0.4)
    assert pairs[("2", "1")]["crystals"] == "3"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| 2 | 2 | 2 | 2.50 (0.00–5.00) | 2.50 (0.00–5.00) | 0.00 (0.00–0.00) | 0.333 | " in printed


def test_a_missing_export_is_one_line(tmp_path, capsys) -> None:
    heads = _load()
    assert heads.main([f"4={tmp_path / 'nowhere'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere does not exist" in err and "--attention" in err
    assert "\n" not in err and "Traceback" not in err


def test_exports_without_common_crystals_are_one_error(tmp_path) -> None:
    heads = _load()
    a = _export(tmp_path / "a", {"c1": _one_hot_heads(1)})
    b = _export(tmp_path / "b", {"c2": _one_hot_heads(1)})
    (b / "nacl.npz").unlink()
    index = json.loads((b / "index.json").read_text())
    del index["crystals"]["nacl"]
    (b / "index.json").write_text(json.dumps(index))
    with pytest.raises(SystemExit, match="share no crystal ids"):
        heads.main([f"a={a}", f"b={b}"])
