"""Scatter ops vs naive per-segment loops, torch-scatter (when installed) and gradcheck."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sagnn_lightning.nn.scatter import (
    scatter_max,
    scatter_mean,
    scatter_softmax,
    scatter_sum,
    segment_counts,
    torch_scatter_available,
)

OPS = {"sum": scatter_sum, "mean": scatter_mean, "max": scatter_max}


def naive(src: torch.Tensor, index: torch.Tensor, dim_size: int, reduce: str) -> torch.Tensor:
    out = src.new_zeros((dim_size, *src.shape[1:]))
    for s in range(dim_size):
        rows = src[index == s]
        if rows.shape[0]:
            out[s] = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.max(0).values}[reduce]
    return out


def naive_softmax(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    out = torch.empty_like(src)
    for s in range(dim_size):
        mask = index == s
        if mask.any():
            out[mask] = src[mask].softmax(dim=0)
    return out


def make(seed: int, rows: int = 40, segments: int = 7, trailing: tuple[int, ...] = (3,), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, segments - 1, (rows,), generator=g)  # the last segment stays empty
    src = torch.randn(rows, *trailing, generator=g, dtype=dtype)
    return src, index, segments


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
@pytest.mark.parametrize("trailing", [(), (3,), (2, 4)])
def test_matches_naive(reduce, trailing):
    src, index, n = make(0, trailing=trailing)
    out = OPS[reduce](src, index, n, backend="torch")
    assert out.shape == (n, *trailing)
    torch.testing.assert_close(out, naive(src, index, n, reduce))
    assert (out[n - 1] == 0).all(), "an empty segment must give 0"


def test_softmax_matches_naive_and_sums_to_one():
    src, index, n = make(1, trailing=(5,))
    src[0] += 1000.0  # large logits must not overflow
    out = scatter_softmax(src, index, n, backend="torch")
    torch.testing.assert_close(out, naive_softmax(src, index, n))
    sums = scatter_sum(out, index, n, backend="torch")
    present = torch.bincount(index, minlength=n) > 0
    torch.testing.assert_close(sums[present], torch.ones_like(sums[present]))


def test_unsorted_index_and_float32():
    src, index, n = make(2, dtype=torch.float32)
    perm = torch.randperm(src.shape[0], generator=torch.Generator().manual_seed(0))
    for _reduce, op in OPS.items():
        torch.testing.assert_close(op(src[perm], index[perm], n, backend="torch"), op(src, index, n, backend="torch"))


def test_gradcheck_softmax():
    src, index, n = make(3, rows=12, segments=4, trailing=(2,))
    src.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: scatter_softmax(x, index, n, backend="torch"), (src,))
    assert torch.autograd.gradgradcheck(lambda x: scatter_softmax(x, index, n, backend="torch"), (src,))


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_gradcheck_reductions(reduce):
    src, index, n = make(4, rows=12, segments=4, trailing=(2,))
    src.requires_grad_(True)  # continuous random values: no ties, so max is differentiable
    assert torch.autograd.gradcheck(lambda x: OPS[reduce](x, index, n, backend="torch"), (src,))


def test_dim_size_is_mandatory_and_checked():
    src, index, n = make(5)
    with pytest.raises(TypeError):
        scatter_sum(src, index)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="dim_size"):
        scatter_sum(src, index, -1)
    with pytest.raises(ValueError, match="one entry per row"):
        scatter_sum(src, index[:-1], n)
    with pytest.raises(ValueError, match="unknown scatter backend"):
        scatter_sum(src, index, n, backend="cuda")  # type: ignore[arg-type]


def test_auto_backend_equals_native():
    src, index, n = make(6)
    for _reduce, op in OPS.items():
        torch.testing.assert_close(op(src, index, n), op(src, index, n, backend="torch"))
    torch.testing.assert_close(scatter_softmax(src, index, n), scatter_softmax(src, index, n, backend="torch"))


def test_torch_scatter_not_probed_at_import():
    """Importing the module must not try to import torch-scatter (the check is lazy)."""
    code = (
        "import sys, sagnn_lightning.nn.scatter as s; "
        "assert s._torch_scatter_module.cache_info().currsize == 0; assert 'torch_scatter' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(
    not torch_scatter_available(),
    reason="torch-scatter is not installed (optional extra `scatter`); "
    "the native index_add_/scatter_reduce path is tested against naive loops above",
)
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "softmax"])
def test_torch_scatter_equals_native(reduce):
    src, index, n = make(7, trailing=(3,))
    op = scatter_softmax if reduce == "softmax" else OPS[reduce]
    torch.testing.assert_close(op(src, index, n, backend="torch_scatter"), op(src, index, n, backend="torch"))


def test_torch_scatter_backend_error_when_absent():
    if torch_scatter_available():
        pytest.skip("torch-scatter is installed: the missing-package error cannot be triggered")
    src, index, n = make(8)
    with pytest.raises(RuntimeError, match="pip install torch-scatter"):
        scatter_sum(src, index, n, backend="torch_scatter")


def test_mean_with_precomputed_counts_matches_naive():
    """``segment_counts`` once, then ``scatter_mean(..., counts=)`` (the MEGNet blocks' path), empty segment → 0."""
    src, index, n = make(5, trailing=(3,))
    counts = segment_counts(index, n, src.dtype)
    assert counts.shape == (n, 1) and counts[n - 1].item() == 1  # empty segment: divisor clamped to 1
    out = scatter_mean(src, index, n, backend="torch", counts=counts)
    torch.testing.assert_close(out, naive(src, index, n, "mean"))
    src.requires_grad_(True)
    assert "SegmentMean" in type(scatter_mean(src, index, n, backend="torch", counts=counts).grad_fn).__name__
    assert torch.autograd.gradcheck(lambda x: scatter_mean(x, index, n, backend="torch", counts=counts), (src,))
