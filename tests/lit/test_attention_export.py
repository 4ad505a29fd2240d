"""``predict --attention`` and ``attention-plots`` as a user types them (subprocess + timeout), the export against an
independent computation, the element-pair CSV against a naive recomputation, and ``AttentionMapsLogger``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pymatgen.core import Structure
from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger
from torch.utils.data import DataLoader

from sagnn_lightning.__main__ import main as module_main
from sagnn_lightning.cli import cli_main
from sagnn_lightning.data import collate_graphs, structure_to_graph
from sagnn_lightning.data.composition import CompositionSettings
from sagnn_lightning.errors import UsageError
from sagnn_lightning.lit.attention_export import AttentionExport, read_index
from sagnn_lightning.lit.attention_logger import AttentionMapsLogger
from sagnn_lightning.lit.attention_plots import crystal_figure
from sagnn_lightning.lit.inference import predict_structures
from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.lit.pretrained import graph_settings, load
from sagnn_lightning.models import SAGNN, CompositionSAGNN, megnet
from tests.lit.conftest import REPO, TINY_MODEL_YAML, crystal_data_yaml, read_rows, run_python, write_sample_csv

INPUT = REPO / "tests" / "fixtures" / "inputs" / "jdft2d_8.json"  # 8 real 2D crystals of 3 to 10 atoms
MODEL = "matbench_jdft2d/member_0"  # one member: the shipped models are ensembles, --attention takes one model;
# jdft2d, an SA-GNN on its own graph (24 nearest within 8 Å): the phonons model has no attention layer

#: both predict commands in one process (one start-up; the same threads, so the CSVs can be compared byte for byte)
BOTH_PREDICTS = """\
import sys
from sagnn_lightning.__main__ import main
model, data, plain, exported, folder = sys.argv[1:]
common = ["predict", "--model", model, "--input", data, "--batch-size", "3"]
sys.exit(main([*common, "--output", plain]) or main([*common, "--output", exported, "--attention", folder]))
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("attention")
    paths = {"plain": tmp / "plain.csv", "exported": tmp / "exported.csv", "folder": tmp / "maps"}
    proc = run_python(["-c", BOTH_PREDICTS, MODEL, str(INPUT), *(str(p) for p in paths.values())], _env(), timeout=180)
    assert f"wrote the attention weights of 8 crystals to {paths['folder']}" in proc.stdout
    return paths


def _structures() -> dict[str, Structure]:
    rows = json.loads(INPUT.read_text())
    return {row["id"]: Structure.from_dict(row["structure"]) for row in rows}


def test_export_does_not_change_the_predictions(export):
    assert export["exported"].read_bytes() == export["plain"].read_bytes()
    assert len(read_rows(export["plain"])) == 8


def test_index_and_files_against_an_independent_computation(export):
    folder, rows = export["folder"], read_rows(export["plain"])
    index = read_index(folder)
    assert (index["format"], index["format_version"], index["kind"]) == ("sagnn-attention", 1, "crystal")
    assert index["layers"] == ["attention_layers.0"] and index["heads"] == 8 and index["model"] == MODEL
    assert list(index["crystals"]) == [r["id"] for r in rows]  # input order
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(f"{r['id']}.npz" for r in rows), "index.json"])
    structures = _structures()
    module = load(MODEL).eval()  # independent path: pymatgen structures, graphs one by one, the model called directly
    graphs = [structure_to_graph(structures[row["id"]], **graph_settings(MODEL)) for row in rows]
    with torch.no_grad():
        _, maps = module.model(collate_graphs(graphs), return_attention=True)
    for b, row in enumerate(rows):
        entry = index["crystals"][row["id"]]
        structure = structures[row["id"]]
        n = len(structure)
        assert entry["n_atoms"] == n and entry["formula"] == structure.composition.reduced_formula
        assert entry["prediction"] == [float(row["prediction"])]
        with np.load(folder / entry["file"], allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        assert str(arrays["id"]) == row["id"] and arrays["layers"].tolist() == index["layers"]
        assert arrays["attention"].shape == (1, 8, n, n) and arrays["attention"].dtype == np.float32
        np.testing.assert_allclose(arrays["attention"].sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(arrays["received"], arrays["attention"].mean(axis=(1, 2)), atol=1e-7)
        np.testing.assert_allclose(arrays["received"].sum(-1), 1.0, atol=1e-5)
        assert arrays["elements"].tolist() == [site.specie.symbol for site in structure]
        assert arrays["atomic_numbers"].tolist() == [site.specie.Z for site in structure]
        assert arrays["site_index"].tolist() == list(range(n))
        np.testing.assert_allclose(arrays["frac_coords"], structure.frac_coords, atol=1e-9)
        np.testing.assert_allclose(arrays["lattice"], structure.lattice.matrix, atol=1e-12)
        assert arrays["prediction"].tolist() == [float(row["prediction"])]
        np.testing.assert_allclose(arrays["attention"][0], maps["attention_layers.0"][b].numpy(), atol=2e-6)


def test_attention_plots_command_and_the_element_pair_csv(export, tmp_path):
    folder, out = export["folder"], tmp_path / "plots"
    args = ["-m", "sagnn_lightning", "attention-plots", str(folder), "--crystals", "3", "--out", str(out)]
    proc = run_python(args, _env(), timeout=180)
    assert f"wrote 3 crystal heatmaps, element_pairs.png and element_pairs.csv to {out}" in proc.stdout
    ids = list(read_index(folder)["crystals"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*(f"{i}.png" for i in ids[:3]), "element_pairs.png", "element_pairs.csv"]
    )
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # naive recomputation: every crystal, head, query atom and key atom, one at a time
    sums: dict[tuple[str, str], list[float]] = {}
    holders: dict[tuple[str, str], set[str]] = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as npz:
            weights, elements = npz["attention"][-1].astype(np.float64), [str(e) for e in npz["elements"]]
        heads, n, _ = weights.shape
        for h in range(heads):
            for i in range(n):
                for j in range(n):
                    acc = sums.setdefault((elements[i], elements[j]), [0.0, 0.0, 0])
                    acc[0] += weights[h, i, j]
                    acc[1] += n * weights[h, i, j]
                    acc[2] += 1
                    holders.setdefault((elements[i], elements[j]), set()).add(path.name)
    rows = read_rows(out / "element_pairs.csv")
    assert {(r["query"], r["key"]) for r in rows} == set(sums)
    for r in rows:
        weight, relative, count = sums[(r["query"], r["key"])]
        assert float(r["mean_weight"]) == pytest.approx(weight / count, rel=1e-9)
        assert float(r["relative_to_uniform"]) == pytest.approx(relative / count, rel=1e-9)
        assert int(r["atom_pairs"]) * 8 == count  # pairs of atoms; the naive count also runs over the 8 heads
        assert int(r["crystals"]) == len(holders[(r["query"], r["key"])])
    order = [(int(r["query_Z"]), int(r["key_Z"])) for r in rows]
    assert order == sorted(order)  # periodic-table order


def test_user_errors_are_one_line(export, tmp_path, capsys):
    assert module_main(["attention-plots", str(tmp_path / "nothing")]) == 1
    assert module_main(["attention-plots", str(export["folder"]), "--layer", "3", "--out", str(tmp_path)]) == 2
    assert module_main(["attention-plots", str(export["folder"]), "--ids", "mb-nope", "--out", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
    assert "not an attention export" in lines[0] and "predict ... --attention" in lines[0]
    assert "--layer 3: the export has 1 attention layer(s)" in lines[1]
    assert "--ids: 1 id(s) not in" in lines[2]
    with pytest.raises(UsageError, match="no attention layers"):
        AttentionExport(tmp_path / "x", SAGNNModule(model=megnet(num_blocks=1)))
    assert not (tmp_path / "x").exists()


def test_composition_export_has_element_labels_and_fractions(tmp_path):
    torch.manual_seed(0)
    network = CompositionSAGNN(element_features="learned", hidden_dim=16, heads=4, attention="each", num_blocks=2)
    module = SAGNNModule(model=network, target_names=["gap"]).eval()
    export = AttentionExport(tmp_path / "maps", module, source="in memory")
    formulas = ["Fe2O3", "Fe0.7Ni0.2Co0.1", "Si"]
    result = predict_structures(
        module, ["a", "b", "c"], formulas, cutoff=5.0, batch_size=2, settings=CompositionSettings(), on_batch=export
    )
    index = read_index(export.finish().parent)
    assert index["kind"] == "composition" and index["layers"] == ["attention_layers.0", "attention_layers.1"]
    assert [e["formula"] for e in index["crystals"].values()] == ["Fe2O3", "Fe7CoNi2", "Si"]
    assert [e["prediction"][0] for e in index["crystals"].values()] == result.prediction[:, 0].tolist()
    with np.load(tmp_path / "maps" / "b.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    assert arrays["elements"].tolist() == ["Fe", "Co", "Ni"]  # by atomic number
    np.testing.assert_allclose(arrays["fractions"], [0.7, 0.1, 0.2])
    assert arrays["attention"].shape == (2, 4, 3, 3) and "frac_coords" not in arrays
    fig = crystal_figure(arrays)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["Fe 0.7", "Co 0.1", "Ni 0.2"]


def test_callback_writes_pngs_without_wandb(tmp_path):
    csv = write_sample_csv(tmp_path / "mp.csv", 24)
    (tmp_path / "data.yaml").write_text(crystal_data_yaml(csv, batch_size=4))
    (tmp_path / "tiny.yaml").write_text(TINY_MODEL_YAML)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(tmp_path / "data.yaml"),
            "--config",
            str(tmp_path / "tiny.yaml"),
            "--trainer.logger=false",
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
            f"--data.init_args.cache_dir={tmp_path / 'cache'}",
            "--trainer.callbacks+=sagnn_lightning.lit.attention_logger.AttentionMapsLogger",
            "--trainer.callbacks.num_crystals=5",
        ],
        configs=[REPO / "recipes" / "configs" / "sagnn.yaml"],
    )
    loggers = [c for c in cli.trainer.callbacks if isinstance(c, AttentionMapsLogger)]
    assert len(loggers) == 1  # off by default: only the one added here
    pngs = sorted((tmp_path / "run" / "attention_maps").glob("*.png"))
    assert len(pngs) == 5 and pngs == sorted(loggers[0].paths)
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


class RecordingWandb(LightningWandbLogger):
    """A W&B logger that records ``log_image`` calls and starts no run."""

    def __init__(self) -> None:  # no super().__init__: nothing of W&B is touched
        self.calls: list[dict] = []

    def log_image(self, key, images, step=None, **kwargs) -> None:  # type: ignore[override]
        self.calls.append({"key": key, "images": images, **kwargs})


def test_callback_logs_images_to_wandb(tmp_path):
    torch.manual_seed(0)
    module = SAGNNModule(model=SAGNN(hidden_dim=8, heads=2, num_blocks=1, num_gaussians=20, attention_backend="torch"))
    rows = json.loads(INPUT.read_text())[:3]
    graphs = []
    for k, row in enumerate(rows):
        g = structure_to_graph(Structure.from_dict(row["structure"]), cutoff=5.0)
        g.sample_id, g.y = row["id"], torch.tensor([[float(k)]])
        graphs.append(g)
    wandb = RecordingWandb()
    loader = DataLoader(graphs, batch_size=3, collate_fn=collate_graphs)  # type: ignore[arg-type]
    trainer = SimpleNamespace(loggers=[wandb], val_dataloaders=loader, default_root_dir=tmp_path)
    module.train()
    AttentionMapsLogger(num_crystals=2).on_fit_end(trainer, module)  # type: ignore[arg-type]
    assert module.training  # mode restored
    assert len(wandb.calls) == 1 and wandb.calls[0]["key"] == "val/attention_maps"
    assert wandb.calls[0]["caption"] == [rows[0]["id"], rows[1]["id"]]
    images = wandb.calls[0]["images"]
    assert len(images) == 2 and all(im.ndim == 3 and im.shape[2] == 3 and im.dtype == np.uint8 for im in images)
    assert images[0].std() > 0 and not list(tmp_path.iterdir())  # pictures, and no files written


def test_titles_carry_the_unit_and_the_pair_counts_whole_numbers(export):
    """A shipped model's export records its card's unit; the heatmap's title shows it, and the element-pair map's
    count colour bar is labelled in whole atom pairs (decades from 1), never a fraction."""
    from sagnn_lightning.lit.attention_plots import crystal_title, element_pair_figure, element_pair_table
    from sagnn_lightning.lit.registry import card

    unit = card(MODEL).unit
    folder = export["folder"]
    assert read_index(folder)["unit"] == unit
    first = sorted(folder.glob("*.npz"))[0]
    with np.load(first) as npz:
        arrays = {k: npz[k] for k in npz.files}
    value = float(arrays["prediction"][0])
    assert f"= {value:.4g} {unit}" in crystal_title(arrays)
    figure = element_pair_figure(element_pair_table(folder, -1))
    count_bar = figure.axes[-1]  # the colour bars follow the two maps
    labels = [t.get_text() for t in count_bar.get_yticklabels() if t.get_text()]
    assert labels and labels[0] == "1" and all(label.replace(",", "").isdigit() for label in labels), labels
