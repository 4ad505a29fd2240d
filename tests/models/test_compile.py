"""``torch.compile``: both recipe models trace into one graph (no graph break; the Set2Set LSTM is written out under
compile), compiled and eager agree in outputs and gradients, crystals of other sizes reuse the graph (shapes are
dynamic), and ``SAGNNModule(compile=...)`` compiles in place (same state dict). Backend ``aot_eager``: AOT autograd's
tracing without code generation, so the test needs no C++ compiler and stays fast."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from sagnn_lightning.lit.module import SAGNNModule
from sagnn_lightning.nn.readout import LSTMWeights
from tests.scripts import load_script

step_ops = load_script("benchmarks/step_ops.py")


@pytest.fixture(scope="module")
def batches():
    return step_ops.real_batches(12)


@pytest.mark.parametrize("name", ["sagnn_recipe", "composition_recipe"])
def test_the_forward_pass_has_no_graph_break(name, batches):
    factory, kind = step_ops.models()[name]
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(factory())(batches[kind])
    assert explanation.graph_break_count == 0, [str(r.reason).splitlines()[0] for r in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_compiled_equals_eager_and_other_sizes_reuse_the_graph():
    """SA-GNN at the recipes' configuration, float64: compiled (``dynamic=True``) and eager agree in outputs and
    every gradient on a batch of 7 crystals, and a batch of 13 (other atom, edge and crystal counts) runs on the
    same graph: one frame, one graph, no recompile. (The composition model's layers are a subset of SA-GNN's.)"""
    factory, _ = step_ops.models()["sagnn_recipe"]
    torch.manual_seed(0)
    eager = factory().double()
    compiled = factory().double()
    compiled.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    counters.clear()
    compiled.compile(dynamic=True, backend="aot_eager")
    small, large = (step_ops.real_batches(n)["crystal"] for n in (7, 13))
    outputs = []
    for model in (eager, compiled):
        out = model(small)
        out.square().sum().backward()
        outputs.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert torch.allclose(outputs[0][0], outputs[1][0], rtol=1e-9, atol=1e-9)
    for key, grad in outputs[0][1].items():
        assert torch.allclose(grad, outputs[1][1][key], rtol=1e-7, atol=1e-9), key
    compiled(large).sum().backward()
    assert (small.num_nodes, small.num_edges) != (large.num_nodes, large.num_edges)
    assert counters["stats"]["unique_graphs"] == 1 and "recompiles" not in counters


def test_lstm_weights_are_nn_lstm():
    """Same parameter names, initial values for a seed, eager outputs (bit for bit) and, compiled, close."""
    torch.manual_seed(3)
    reference = nn.LSTM(16, 8, num_layers=2)
    torch.manual_seed(3)
    ours = LSTMWeights(16, 8, num_layers=2)
    assert list(reference.state_dict()) == list(ours.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), ours.state_dict().values()))
    x, state = torch.randn(1, 5, 16), (torch.randn(2, 5, 8), torch.randn(2, 5, 8))
    expected, ours_out = reference(x, state), ours(x, state)
    assert torch.equal(expected[0], ours_out[0]) and all(torch.equal(a, b) for a, b in zip(expected[1], ours_out[1]))
    torch._dynamo.reset()
    traced = torch.compile(ours, backend="aot_eager", fullgraph=True)(x, state)
    assert torch.allclose(expected[0], traced[0], atol=1e-6) and torch.allclose(expected[1][1], traced[1][1], atol=1e-6)


def test_the_module_compiles_in_place_when_asked():
    from sagnn_lightning.errors import UsageError

    module = SAGNNModule(step_ops.models()["sagnn_recipe"][0](), compile="default", compile_backend="aot_eager")
    keys = list(module.state_dict())
    module.setup("fit")
    assert module.model._compiled_call_impl is not None and list(module.state_dict()) == keys
    with pytest.raises(UsageError, match="compile must be null"):
        SAGNNModule(compile="fast")


def test_a_recipe_trains_compiled_on_padded_static_shapes(tmp_path):
    """``--data.static_shapes=2 --model.compile=default`` through the quickstart recipe (backend ``aot_eager``):
    fit runs, validates and writes a checkpoint that ``predict`` loads (the compiled model keeps its state dict)."""
    import subprocess
    import sys

    from tests.lit.conftest import REPO, TINY_MODEL_YAML

    root = tmp_path / "run"
    argv = [sys.executable, "recipes/quickstart.py", "fit", "--config", "recipes/quickstart.yaml"]
    (tmp_path / "tiny.yaml").write_text(TINY_MODEL_YAML)
    argv += ["--config", str(tmp_path / "tiny.yaml")]  # the pipeline is the point, not the model's size
    argv += ["--data.init_args.static_shapes=2", "--model.compile=default", "--model.compile_backend=aot_eager"]
    argv += ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    argv += ["--trainer.logger=false", f"--trainer.default_root_dir={root}"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sagnn fit done: best val/mae=" in proc.stdout
    from sagnn_lightning.__main__ import main as module_main

    out = tmp_path / "p.csv"
    predict = ["predict", "--ckpt", "best", "--run-dir", str(root), "--output", str(out)]
    assert module_main([*predict, "--input", str(REPO / "tests" / "fixtures" / "inputs" / "cifs")]) == 0
    assert len(out.read_text().splitlines()) == 9  # header + 8 crystals
