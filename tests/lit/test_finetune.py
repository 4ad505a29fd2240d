"""Fine-tuning (:mod:`sagnn_lightning.lit.finetune` through ``SAGNNModule(init_from, freeze, reset_head)``):
weights copied from a shipped model, frozen parameters untouched by training, a new head, clear errors, and the
``recipes/finetune.yaml`` recipe from the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from sagnn_lightning import pretrained
from sagnn_lightning.data.crystal import CrystalDataModule
from sagnn_lightning.errors import UsageError, lightning_flag
from sagnn_lightning.lit import SAGNNModule
from sagnn_lightning.lit.finetune import parameter_groups
from sagnn_lightning.models import SAGNN
from tests.lit.conftest import REPO, run_python, write_sample_csv
from tests.lit.helpers import quiet_trainer

SOURCE = "matbench_perovskites"


def _architecture(**changes) -> dict:
    args = dict(pretrained.card(SOURCE).config["model"]["model"]["init_args"])
    args.pop("num_targets")
    args["attention_backend"] = "torch"
    return {**args, **changes}


def _network(name: str = SOURCE) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pretrained.load(name).model.state_dict().items()}


def test_init_from_a_name_copies_the_network_but_not_the_target_statistics():
    module = SAGNNModule(SAGNN(**_architecture()), target_mean=[3.0], target_std=[2.0], init_from=SOURCE)
    module.setup("fit")
    source = _network()
    own = module.model.state_dict()
    assert own.keys() == source.keys()
    assert all(torch.equal(own[k], source[k]) for k in source)
    assert module.target_mean.item() == 3.0 and module.target_std.item() == 2.0


def test_init_from_a_checkpoint_file(tmp_path):
    path = pretrained.checkpoint_file(SOURCE)
    module = SAGNNModule(SAGNN(**_architecture()), init_from=str(path))
    module.setup("validate")
    assert torch.equal(module.model.head[0].weight, _network()["head.0.weight"])


def test_reset_head_builds_the_new_head_shape_and_loads_the_rest():
    torch.manual_seed(1)
    model = SAGNN(num_targets=2, **_architecture())
    fresh_head = {k: v.clone() for k, v in model.head.state_dict().items()}
    module = SAGNNModule(model, init_from=SOURCE, reset_head=True)
    module.setup("fit")
    source = _network()
    assert module.model.head[-1].weight.shape == (2, 16)
    assert all(torch.equal(v, fresh_head[k]) for k, v in module.model.head.state_dict().items())
    body = [k for k in source if not k.startswith("head.")]
    assert body and all(torch.equal(module.model.state_dict()[k], source[k]) for k in body)


def test_another_number_of_targets_without_reset_head_points_to_it():
    module = SAGNNModule(SAGNN(num_targets=2, **_architecture()), init_from=SOURCE)
    with pytest.raises(UsageError) as info:
        module.setup("fit")
    message = str(info.value)
    assert "head.4.weight: checkpoint [1, 16] vs model [2, 16]" in message
    assert "add reset_head=true" in message and "\n" not in message  # a Python caller reads the argument's name
    assert "add --model.reset_head=true" in info.value.render(lightning_flag)  # the LightningCLI reads its flag


def test_init_from_another_architecture_names_the_shapes_and_the_arguments_that_fix_them():
    module = SAGNNModule(SAGNN(**_architecture(atom_embedding_dim=16, attention="none")), init_from=SOURCE)
    with pytest.raises(UsageError) as info:
        module.setup("fit")
    message = str(info.value)
    assert "atom_embedding.weight: checkpoint [101, 64] vs model [101, 16]" in message
    assert "not in the model" in message and "\n" not in message
    # the fix names the constructor arguments the checkpoint was built with, and only those
    assert message.endswith('build the model as the checkpoint\'s: atom_embedding_dim=64, attention="last"')
    rendered = info.value.render(lightning_flag)
    assert '--model.model.atom_embedding_dim=64, --model.model.attention="last"' in rendered
    # following it loads the weights
    fixed = SAGNNModule(SAGNN(**_architecture(atom_embedding_dim=64, attention="last")), init_from=SOURCE)
    fixed.setup("fit")
    assert torch.equal(fixed.model.atom_embedding.weight, _network()["atom_embedding.weight"])


def test_a_checkpoint_without_its_arguments_points_to_the_model_card(tmp_path):
    """A checkpoint saved without hyper-parameters: the differing shapes are named, the fix is the card."""
    source = torch.load(pretrained.checkpoint_file(SOURCE), map_location="cpu", weights_only=False)
    bare = tmp_path / "bare.ckpt"
    torch.save({"state_dict": source["state_dict"]}, bare)
    module = SAGNNModule(SAGNN(**_architecture(attention="none")), init_from=str(bare))
    with pytest.raises(UsageError, match="attention_layers.0.* not in the model") as info:
        module.setup("fit")
    assert "models <name>" in str(info.value) and "build the model as" not in str(info.value)


def test_init_from_with_another_cutoff_is_refused():
    module = SAGNNModule(SAGNN(**_architecture(cutoff=6.0)), init_from=SOURCE)
    with pytest.raises(UsageError, match=r"set cutoff=5 ") as info:
        module.setup("fit")
    assert "init_from=matbench_perovskites" in str(info.value) and "--" not in str(info.value)
    assert "set --data.cutoff=5 " in info.value.render(lightning_flag)


def test_reset_head_needs_init_from_and_freeze_names_must_exist():
    with pytest.raises(UsageError, match="^reset_head=true needs init_from=") as info:
        SAGNNModule(SAGNN(**_architecture()), reset_head=True)
    assert info.value.render(lightning_flag).startswith("--model.reset_head=true needs --model.init_from=")
    with pytest.raises(UsageError, match="'embeddings' names no parameters; use any of: atom_embedding"):
        SAGNNModule(SAGNN(**_architecture()), freeze=["embeddings"])
    assert "blocks.0" in parameter_groups(SAGNN()) and "head" in parameter_groups(SAGNN())


def test_frozen_parameters_are_bit_identical_after_training_and_the_others_changed(tmp_path):
    csv = write_sample_csv(tmp_path / "mp32.csv", 32)
    datamodule = CrystalDataModule(
        str(csv), target_columns=["band_gap"], val_fraction=0.25, test_fraction=0.0, batch_size=8, progress=False
    )
    datamodule.setup("fit")
    frozen_prefixes = ["atom_embedding", "atom_encoder", "blocks.0"]
    module = SAGNNModule(
        SAGNN(**_architecture()),
        target_mean=datamodule.target_mean,
        target_std=datamodule.target_std,
        init_from=SOURCE,
        freeze=frozen_prefixes,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    )
    module.setup("fit")  # the pretrained weights, as the Trainer's setup loads them
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    trainer = quiet_trainer(max_steps=2, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    after = dict(module.model.named_parameters())
    frozen = {k for k in before if any(k == p or k.startswith(p + ".") for p in frozen_prefixes)}
    assert frozen and frozen == {k for k, p in after.items() if not p.requires_grad}
    assert all(torch.equal(after[k], before[k]) for k in frozen)
    changed = {k for k in before if k not in frozen and not torch.equal(after[k], before[k])}
    assert changed == set(before) - frozen
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(after[k]) for k in frozen}


def test_finetune_recipe_has_the_architecture_of_every_shipped_model():
    recipe = yaml.safe_load((REPO / "recipes" / "finetune.yaml").read_text())
    shared = yaml.safe_load((REPO / "recipes" / "configs" / "sagnn.yaml").read_text())
    assert recipe["model"]["model"] == shared["model"]["model"]
    for name in pretrained.available():
        shipped = pretrained.card(name).config["model"]["model"]["init_args"]
        assert {k: shipped[k] for k in recipe["model"]["model"]["init_args"]} == recipe["model"]["model"]["init_args"]
    assert recipe["data"]["init_args"]["cutoff"] == pretrained.card(recipe["model"]["init_from"]).cutoff


@pytest.mark.slow
def test_finetune_recipe_from_the_command_line(tmp_path, offline_env):
    """``fit --config recipes/finetune.yaml`` on a user's CSV: the shipped weights are loaded (everything but the
    head frozen, so they must come out unchanged) and a new head is trained."""
    csv = write_sample_csv(tmp_path / "mine.csv", 40)
    root = tmp_path / "run"
    body = [g for g in parameter_groups(SAGNN()) if g != "head" and "." not in g]
    run_python(
        [
            "-m",
            "sagnn_lightning",
            "fit",
            "--config",
            str(REPO / "recipes" / "finetune.yaml"),
            f"--data.data_file={csv}",
            "--data.target_columns=[band_gap]",
            "--data.val_fraction=0.2",
            "--data.test_fraction=0.2",
            "--data.batch_size=8",
            f"--model.freeze=[{','.join(body)}]",
            "--model.model.init_args.attention_backend=torch",
            "--trainer.max_epochs=2",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}",
        ],
        offline_env,
        timeout=300,
    )
    trained = SAGNNModule.load_from_checkpoint(root / "checkpoints" / "last.ckpt", map_location="cpu").model
    source = _network()
    state = trained.state_dict()
    assert all(torch.equal(state[k], source[k]) for k in source if not k.startswith("head."))
    assert not torch.equal(state["head.4.weight"], source["head.4.weight"])


def test_an_unknown_init_from_is_one_line_before_anything_starts(tmp_path, offline_env):
    """Checked with the run's other paths, before the model, the data or a W&B run exist."""
    root = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "sagnn_lightning", "fit", "--config", str(REPO / "recipes" / "finetune.yaml")]
        + ["--model.init_from=matbench_nope.ckpt", f"--trainer.default_root_dir={root}"],
        cwd=REPO,
        env=offline_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: --model.init_from=matbench_nope.ckpt is neither a shipped model (matbench_jdft2d, matbench_perovskites,"
        " matbench_phonons) nor an existing .ckpt; give one of those names or a checkpoint written by training"
    ]
    assert "Traceback" not in proc.stderr and not (root / "wandb").exists()


def test_init_from_one_member_of_a_shipped_ensemble():
    """``NAME/member_<j>`` starts from member ``j`` of a shipped ensemble (the bare name: member 0)."""
    from sagnn_lightning.lit.registry import PretrainedError

    args = dict(pretrained.card("matbench_jdft2d").config["model"]["model"]["init_args"])
    args.pop("num_targets")
    ensemble = pretrained.load("matbench_jdft2d")
    for name, member in (("matbench_jdft2d/member_2", 2), ("matbench_jdft2d", 0)):
        module = SAGNNModule(SAGNN(**{**args, "attention_backend": "torch"}), init_from=name)
        module.setup("fit")
        own, source = module.model.state_dict(), ensemble.members[member].model.state_dict()
        assert all(torch.equal(own[k], source[k]) for k in source)
    assert not torch.equal(ensemble.members[2].model.head[0].weight, ensemble.members[0].model.head[0].weight), (
        "members differ"
    )
    with pytest.raises(PretrainedError, match="member_0 to member_4"):
        pretrained.checkpoint_file("matbench_jdft2d/member_9")
