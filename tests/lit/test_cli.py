"""The LightningCLI end to end on real data: fit → test → predict, overrides, links, W&B offline, YAMLs, sweeps."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sagnn_lightning.__main__ import main as module_main
from sagnn_lightning.cli import build_argv, cli_main
from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.lit.schedules import HoldThenLinearDecay
from sagnn_lightning.lit.wandb import resolve_offline, wandb_api_key_configured
from sagnn_lightning.models import SAGNN
from tests.lit.conftest import REPO, SHARED, read_rows, run_python, wandb_run_bytes
from tests.lit.helpers import learning_rates

RECIPES = REPO / "recipes"
BASE = RECIPES / "configs" / "sagnn.yaml"


def _common(sample_run) -> list[str]:
    return [
        "--config",
        str(sample_run["data"]),
        "--config",
        str(sample_run["tiny"]),
        f"--trainer.default_root_dir={sample_run['root']}",
    ]


def test_fit_test_predict_end_to_end(sample_run, offline_env, tmp_path, capsys):
    root = sample_run["root"]
    cli = cli_main(
        [
            "fit",
            *_common(sample_run),
            "--trainer.max_epochs=2",
            "--model.optimizer.init_args.lr=0.004",
            "--data.init_args.batch_size=6",
            "--model.model.init_args.heads=4",
            "--model.lr_multipliers={attention_layers: 0.25}",
            "--model.scheduler.init_args.warmup_epochs=1",
        ],
        configs=[BASE],
    )
    out = capsys.readouterr().out

    # overrides reached the objects
    assert cli.trainer.current_epoch == 2
    assert cli.trainer.optimizers[0].defaults["lr"] == 0.004
    assert cli.datamodule.batch_size == 6
    assert all(layer.heads == 4 for layer in cli.model.model.attention_layers)
    assert isinstance(cli.trainer.lr_scheduler_configs[0].scheduler, HoldThenLinearDecay)
    assert cli.trainer.lr_scheduler_configs[0].scheduler.warmup_epochs == 1
    attention, rest = cli.trainer.optimizers[0].param_groups  # --model.lr_multipliers: the attention's own rate
    assert {id(p) for p in attention["params"]} == {id(p) for p in cli.model.model.attention_layers.parameters()}
    assert attention["lr"] == pytest.approx(0.25 * rest["lr"]) and rest["lr"] > 0
    # DataModule statistics were linked into the model
    assert cli.model.task_type == cli.datamodule.task_type == "regression"
    assert cli.model.model.num_targets == cli.datamodule.num_targets == 1
    np.testing.assert_allclose(cli.model.target_mean.flatten().tolist(), cli.datamodule.target_mean, rtol=1e-6)
    np.testing.assert_allclose(cli.model.target_std.flatten().tolist(), cli.datamodule.target_std, rtol=1e-6)
    assert cli.model.target_names == ["band_gap"]

    # run directory: best + last checkpoints, config, parity plot, W&B files — nothing in the cwd
    best = sorted((root / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and (root / "checkpoints" / "last.ckpt").is_file()
    assert (root / "config.yaml").is_file() and (root / "parity_val.png").stat().st_size > 1000
    assert f"best checkpoint {best[0]}" in out and "best val/mae=" in out
    run, records = wandb_run_bytes(root)
    assert f"W&B run dir {run}" in out
    for key in (b"train/loss_epoch", b"val/loss", b"val/mae", b"val/rmse", b"val/r2", b"perf/train_crystals_per_s"):
        assert key in records, f"{key!r} not logged to W&B"
    assert b"hidden_dim" in records and b"band_gap" in records  # the full config
    assert list((run / "files" / "media" / "images").rglob("parity*.png")), "parity plot not logged to W&B"

    # the checkpoint reproduces the run: model config + statistics, loadable without the CLI
    ckpt = torch.load(best[0], map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["init_args"]["heads"] == 4
    assert ckpt["hyper_parameters"]["model"]["init_args"]["num_targets"] == 1

    # test: logged test/mae equals the MAE of the best checkpoint's predictions on the test split
    cli = cli_main(["test", *_common(sample_run), f"--ckpt_path={best[0]}"], configs=[BASE])
    test_mae = float(cli.trainer.callback_metrics["test/mae"])
    module = SAGNNModule.load_from_checkpoint(best[0]).eval()
    with torch.no_grad():
        pairs = [(module(b)[:, 0], b.y[:, 0]) for b in cli.datamodule.test_dataloader()]
    pred, y = torch.cat([p for p, _ in pairs]), torch.cat([t for _, t in pairs])
    assert len(y) == len(cli.datamodule.test_dataset) > 0
    assert test_mae == pytest.approx(float((pred - y).abs().mean()), rel=1e-5)
    assert (root / "parity_test.png").is_file()

    # predict subcommand of the CLI: CSV of the test split, ids unique, values = the module's
    out_csv = tmp_path / "cli_preds.csv"
    cli_main(
        ["predict", *_common(sample_run), f"--ckpt_path={best[0]}", f"--predictions.output={out_csv}"], configs=[BASE]
    )
    rows = read_rows(out_csv)
    assert len(rows) == len({r["id"] for r in rows}) == len(y)
    np.testing.assert_allclose([float(r["prediction"]) for r in rows], pred.numpy(), rtol=1e-5, atol=1e-6)

    # python -m sagnn_lightning predict on the user's table (every row) → same values for the test ids
    file_csv = tmp_path / "file_preds.csv"
    assert (
        module_main(["predict", "--ckpt", str(best[0]), "--input", str(sample_run["csv"]), "--output", str(file_csv)])
        == 0
    )
    by_id = {r["id"]: float(r["prediction"]) for r in read_rows(file_csv)}
    assert len(by_id) == 48
    for r in rows:
        assert by_id[r["id"]] == pytest.approx(float(r["prediction"]), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("ema", [False, True])
def test_logger_false_disables_wandb(ema, sample_run, offline_env, tmp_path, monkeypatch):
    # with EMA, Lightning deep-copies the module and, through the trainer, the CLI's parser and its defaults: a
    # default logger object there (jsonargparse's lazy_instance) started a W&B run on copy despite logger=false
    import wandb

    monkeypatch.chdir(tmp_path)
    root = sample_run["root"]
    ema_args = (
        ["--trainer.callbacks+=pytorch_lightning.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay=0.9"]
        if ema
        else []
    )
    cli = cli_main(
        [*_common(sample_run), "--trainer.logger=false", "--trainer.max_epochs=1", *ema_args], configs=[BASE]
    )
    assert cli.trainer.loggers == []
    assert wandb.run is None
    assert not (root / "wandb").exists() and not (tmp_path / "wandb").exists()
    assert (root / "checkpoints" / "last.ckpt").is_file()


def test_missing_subcommand_means_fit_and_recipe_configs_come_first():
    assert build_argv(["--trainer.max_epochs=1"], ["a.yaml"]) == ["fit", "--config", "a.yaml", "--trainer.max_epochs=1"]
    assert build_argv(["test", "--config", "b.yaml"], ["a.yaml"]) == [
        "test",
        "--config",
        "a.yaml",
        "--config",
        "b.yaml",
    ]
    assert build_argv(["--help"], ["a.yaml"]) == ["--help"]


def test_wandb_offline_without_api_key(tmp_path):
    no_key = {"NETRC": str(tmp_path / "missing")}
    assert not wandb_api_key_configured(no_key) and resolve_offline(None, no_key) is True
    assert resolve_offline(None, {**no_key, "WANDB_API_KEY": "x" * 40}) is False
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert wandb_api_key_configured({"NETRC": str(netrc)}) and resolve_offline(None, {"NETRC": str(netrc)}) is False
    assert resolve_offline(None, {"NETRC": str(netrc), "WANDB_MODE": "offline"}) is True
    assert resolve_offline(False, no_key) is False


# ----------------------------------------------------------------------------- YAMLs and sweeps


def _print_config(args: list[str], configs: list[Path], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*args, "--print_config"], configs=configs)
    assert exit_info.value.code in (None, 0), capsys.readouterr().err[-3000:]
    return yaml.safe_load(capsys.readouterr().out)


RECIPE_CONFIGS = {p.stem: p for p in sorted(RECIPES.glob("*.py"))}


def _recipe_configs(script: Path) -> list[Path]:
    """The default configs a recipe script passes to ``recipe_main`` (read from its source)."""
    text = script.read_text()
    if script.stem == "quickstart":
        return [RECIPES / "configs" / "sagnn.yaml", RECIPES / "quickstart.yaml"]
    return [RECIPES / "configs" / name for name in re.findall(r'CONFIGS / "([\w.]+\.yaml)"', text)]


@pytest.mark.parametrize("script", sorted(RECIPE_CONFIGS), ids=str)
def test_every_recipe_yaml_parses_with_print_config(script, capsys, tmp_path):
    configs = _recipe_configs(RECIPE_CONFIGS[script])
    assert all(c.is_file() for c in configs)
    printed = _print_config(["fit"], configs, capsys)
    assert printed["model"]["model"]["class_path"].endswith("SAGNN")
    assert printed["data"]["class_path"].startswith("sagnn_lightning.data.")
    if script in ("quickstart", "matbench_is_metal"):  # the printed YAML alone reproduces the config
        dumped = tmp_path / "printed.yaml"
        dumped.write_text(yaml.safe_dump(printed))
        assert _print_config(["fit", "--config", str(dumped)], [], capsys) == printed


def test_the_phonons_recipe_builds_the_model_without_attention_and_one_flag_restores_sa_gnn(capsys):
    """The phonons recipe defaults to the w/o-MHSA model that inner-fold validation chose on all five folds;
    ``--model.model.attention=last`` gives SA-GNN back (8 heads after the last block), as every other recipe has."""
    configs = _recipe_configs(RECIPE_CONFIGS["matbench_phonons"])
    default = _print_config(["fit"], configs, capsys)["model"]["model"]["init_args"]
    assert len(SAGNN(**default).attention_layers) == 0
    restored = _print_config(["fit", "--model.model.attention=last"], configs, capsys)["model"]["model"]["init_args"]
    layers = SAGNN(**restored).attention_layers
    assert len(layers) == 1 and layers[0].heads == 8
    others = _print_config(["fit"], _recipe_configs(RECIPE_CONFIGS["matbench_jdft2d"]), capsys)["model"]["model"]
    assert len(SAGNN(**others["init_args"]).attention_layers) == 1


def test_the_phonons_recipe_trains_kgcnns_schedule_to_epoch_400_and_its_comment_restores_the_shared_one(capsys):
    """The phonons schedule that validation chose (hold 100 epochs, linear over 900, stopped at 400), as the
    scheduler runs it; the flags its YAML comment gives restore the shared schedule (30 held, decay to epoch 300)."""
    from sagnn_lightning.lit.schedules import HoldThenLinearDecay

    configs = _recipe_configs(RECIPE_CONFIGS["matbench_phonons"])
    printed = _print_config(["fit"], configs, capsys)
    args = printed["model"]["scheduler"]["init_args"]
    assert printed["trainer"]["max_epochs"] == 400 and (args["hold_epochs"], args["decay_epochs"]) == (100, 900)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    schedule = HoldThenLinearDecay(optimizer, **args)
    schedule.fit_to(printed["trainer"]["max_epochs"])  # a fixed decay length is kept, not fitted to the budget
    rates = learning_rates(schedule, 400)
    assert rates[:101] == [5e-4] * 101
    assert rates[399] == pytest.approx(5e-4 * (1 - 0.99 * 299 / 900))
    comment = (RECIPES / "configs" / "matbench_phonons.yaml").read_text()
    flags = comment.split("The shared one: ")[1].split("\n")[0].split()
    shared = _print_config(["fit", *flags], configs, capsys)
    base = _print_config(["fit"], _recipe_configs(RECIPE_CONFIGS["matbench_jdft2d"]), capsys)
    assert shared["model"]["scheduler"] == base["model"]["scheduler"]
    assert shared["trainer"]["max_epochs"] == base["trainer"]["max_epochs"] == 300


def test_every_yaml_in_recipes_is_used_by_a_recipe():
    used = {c for s in RECIPE_CONFIGS.values() for c in _recipe_configs(s)}
    # overlays a user stacks with --config (tested in tests/lit/test_baseline_configs.py), and the complete config
    # that `python -m sagnn_lightning fit --config recipes/finetune.yaml` runs (tested in tests/lit/test_finetune.py)
    overlays = {RECIPES / "configs" / "megnet_kgcnn.yaml", RECIPES / "finetune.yaml"}
    yamls = (set(RECIPES.glob("*.yaml")) | set((RECIPES / "configs").glob("*.yaml"))) - overlays
    assert yamls <= used, f"YAMLs not reachable from a recipe: {sorted(map(str, yamls - used))}"
    assert {
        "matbench_band_gap",
        "matbench_e_form",
        "matbench_is_metal",
        "matbench_perovskites",
        "matbench_jdft2d",
        "matbench_phonons",
        "matbench_dielectric",
        "matbench_log_gvrh",
        "matbench_log_kvrh",
        "quickstart",
        "matbench_expt_gap",
        "matbench_expt_is_metal",
        "matbench_glass",
        "matbench_steels",
    } <= set(RECIPE_CONFIGS)


SWEEPS = sorted((RECIPES / "sweeps").glob("*.yaml"))


def _sweep_values(spec: dict) -> list:
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.stem)
def test_every_swept_parameter_is_accepted_by_the_cli(sweep, capsys):
    spec = yaml.safe_load(sweep.read_text())
    assert spec["method"] == "bayes" and spec["metric"]["name"].startswith("val/")
    program = REPO / spec["program"]
    assert program.is_file(), f"{sweep}: program {spec['program']} does not exist"
    assert "${args}" in spec["command"] and "${program}" in spec["command"]
    configs = _recipe_configs(program)
    grid = {name: _sweep_values(values) for name, values in spec["parameters"].items()}
    for k in range(max(len(v) for v in grid.values())):  # every value of every parameter at least once
        chosen = {name: values[k % len(values)] for name, values in grid.items()}
        printed = _print_config(["fit", *(f"--{n}={v}" for n, v in chosen.items())], configs, capsys)  # as ${args}
        for name, value in chosen.items():
            node = printed
            for part in name.split("."):
                node = node[part]
            assert node == value or float(node) == pytest.approx(float(value)), f"{sweep.name}: {name}={value} → {node}"
    swept = " ".join(spec["parameters"])
    for needle in ("lr", "hidden_dim", "heads", "attention", "cutoff"):
        assert needle in swept, f"{sweep.name} does not sweep {needle}"


# ----------------------------------------------------------------------------- a real recipe script, real matbench data


@pytest.mark.shared_data
def test_recipe_script_matbench_jdft2d_fit_and_test(tmp_path, offline_env):
    data_file = SHARED / "matbench" / "matbench_jdft2d.json.gz"
    if not data_file.is_file():
        pytest.skip(f"needs the shared matbench data ({data_file})")
    tiny = tmp_path / "tiny.yaml"
    from tests.lit.conftest import TINY_MODEL_YAML

    tiny.write_text(TINY_MODEL_YAML)
    root = tmp_path / "run"
    args = [
        "recipes/matbench_jdft2d.py",
        "--config",
        str(tiny),
        f"--data.data_file={data_file}",
        "--data.num_workers=0",
        "--data.progress=false",
        "--data.batch_size=32",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        f"--trainer.default_root_dir={root}",
    ]
    proc = run_python(args, offline_env)
    assert "sagnn fit done:" in proc.stdout and "best val/mae=" in proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # jdft2d fold 0: 509 training rows, 10 % carved out for validation → mean/std of 458 training targets
    assert ckpt["hyper_parameters"]["task_type"] == "regression"
    assert ckpt["hyper_parameters"]["target_names"] == ["exfoliation_en"]
    proc = run_python(
        [
            "recipes/matbench_jdft2d.py",
            "test",
            "--config",
            str(tiny),
            f"--data.data_file={data_file}",
            "--data.num_workers=0",
            "--data.progress=false",
            "--trainer.logger=false",
            "--trainer.limit_test_batches=2",
            f"--trainer.default_root_dir={root}",
            f"--ckpt_path={root / 'checkpoints' / 'last.ckpt'}",
        ],
        offline_env,
    )
    assert "sagnn test done: test/loss=" in proc.stdout and "test/mae=" in proc.stdout
