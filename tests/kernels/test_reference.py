"""The plain-torch oracle and the padded-SDPA backend against an independent dense formula."""

from __future__ import annotations

import math

import pytest
import torch

from sagnn_lightning.kernels import (
    resolve_backend,
    varlen_attention,
    varlen_attention_padded,
    varlen_attention_reference,
)

CASES = {
    "one_atom": [1],
    "mixed": [1, 5, 2, 9],
    "with_empty": [3, 0, 4],
    "huge_among_small": [5, 5, 40, 5],
}


def cu_seqlens_of(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)


def dense_block_diagonal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: list[int],
    scale: float,
    key_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Independent formula: full ``(total × total)`` scores (``+ key_bias[j]``) with ``-inf`` across sequences."""
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    same = seq[:, None] == seq[None, :]
    scores = torch.einsum("ihd,jhd->hij", q, k) * scale
    if key_bias is not None:
        scores = scores + key_bias
    weights = scores.masked_fill(~same, float("-inf")).softmax(-1)
    return torch.einsum("hij,jhd->ihd", weights, v)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("heads,head_dim", [(1, 8), (4, 5)])
def test_reference_and_padded_match_dense(name: str, heads: int, head_dim: int) -> None:
    lengths = CASES[name]
    gen = torch.Generator().manual_seed(0)
    total = sum(lengths)
    q, k, v = (torch.randn(total, heads, head_dim, generator=gen, dtype=torch.float64) for _ in range(3))
    cu = cu_seqlens_of(lengths)
    scale = 1.0 / math.sqrt(head_dim)
    expected = dense_block_diagonal(q, k, v, lengths, scale)
    torch.testing.assert_close(varlen_attention_reference(q, k, v, cu), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(varlen_attention_padded(q, k, v, cu, max(lengths)), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        varlen_attention(q, k, v, cu.long(), max(lengths), backend="torch"), expected, rtol=1e-12, atol=1e-12
    )


def values_and_grads(fn, inputs, do):
    """``[out, *grads]`` of ``fn`` at fresh leaf copies of ``inputs`` with upstream gradient ``do``."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, do)]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("heads,head_dim", [(1, 8), (4, 5)])
def test_key_bias_reference_and_padded_match_dense(name: str, heads: int, head_dim: int) -> None:
    """With a key bias: values and gradients w.r.t. q, k, v **and** the bias, against the dense formula."""
    lengths = CASES[name]
    gen = torch.Generator().manual_seed(0)
    total = sum(lengths)
    q, k, v, do = (torch.randn(total, heads, head_dim, generator=gen, dtype=torch.float64) for _ in range(4))
    bias = 2.0 * torch.randn(total, generator=gen, dtype=torch.float64)
    cu = cu_seqlens_of(lengths)
    scale = 1.0 / math.sqrt(head_dim)
    expected = values_and_grads(
        lambda q, k, v, b: dense_block_diagonal(q, k, v, lengths, scale, b), (q, k, v, bias), do
    )
    paths = {
        "reference": lambda q, k, v, b: varlen_attention_reference(q, k, v, cu, key_bias=b),
        "padded": lambda q, k, v, b: varlen_attention_padded(q, k, v, cu, max(lengths), key_bias=b),
        "dispatch": lambda q, k, v, b: varlen_attention(q, k, v, cu.long(), max(lengths), backend="torch", key_bias=b),
    }
    for path, fn in paths.items():
        for label, got, want in zip(
            ("out", "dq", "dk", "dv", "dbias"), values_and_grads(fn, (q, k, v, bias), do), expected
        ):
            torch.testing.assert_close(
                got, want, rtol=1e-12, atol=1e-12, msg=lambda m, path=path, label=label: f"{path} {label}: {m}"
            )


def test_zero_key_bias_is_no_bias_and_the_bias_is_shift_invariant_per_sequence() -> None:
    lengths = [3, 6]
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(9, 2, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(9, generator=gen, dtype=torch.float64)
    cu = cu_seqlens_of(lengths)
    for fn in (
        lambda b: varlen_attention_reference(q, k, v, cu, key_bias=b),
        lambda b: varlen_attention_padded(q, k, v, cu, 6, key_bias=b),
    ):
        torch.testing.assert_close(fn(torch.zeros(9, dtype=torch.float64)), varlen_attention_reference(q, k, v, cu))
        shifted = bias + torch.tensor([5.0] * 3 + [-7.0] * 6, dtype=torch.float64)  # a constant per crystal
        torch.testing.assert_close(fn(shifted), fn(bias))


def test_custom_scale() -> None:
    lengths = [3, 6]
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(9, 2, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    cu = cu_seqlens_of(lengths)
    expected = dense_block_diagonal(q, k, v, lengths, 0.3)
    torch.testing.assert_close(varlen_attention_reference(q, k, v, cu, scale=0.3), expected)
    torch.testing.assert_close(varlen_attention_padded(q, k, v, cu, 6, scale=0.3), expected)


@pytest.mark.parametrize("fn", ["reference", "padded"])
def test_gradcheck_float64_with_key_bias(fn: str) -> None:
    """Gradients w.r.t. q, k, v and the key bias (one entry -inf: a masked key, whose gradient is 0)."""
    lengths = [1, 4, 0, 3]
    cu = cu_seqlens_of(lengths)
    gen = torch.Generator().manual_seed(5)
    inputs = tuple(torch.randn(8, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(8, generator=gen, dtype=torch.float64, requires_grad=True)

    def func(q, k, v, b):
        if fn == "reference":
            return varlen_attention_reference(q, k, v, cu, key_bias=b)
        return varlen_attention_padded(q, k, v, cu, max(lengths), key_bias=b)

    assert torch.autograd.gradcheck(func, (*inputs, bias))
    masked = torch.where(torch.arange(8) == 2, float("-inf"), bias.detach()).requires_grad_()
    assert torch.autograd.gradcheck(lambda q, k, v: func(q, k, v, masked), inputs)
    func(*inputs, masked).sum().backward()
    assert masked.grad is not None and masked.grad[2] == 0 and masked.grad.isfinite().all()


@pytest.mark.parametrize("fn", ["reference", "padded"])
def test_gradcheck_float64(fn: str) -> None:
    lengths = [1, 4, 3]
    cu = cu_seqlens_of(lengths)
    gen = torch.Generator().manual_seed(2)
    inputs = tuple(torch.randn(8, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def func(q, k, v):
        if fn == "reference":
            return varlen_attention_reference(q, k, v, cu)
        return varlen_attention_padded(q, k, v, cu, max(lengths))

    assert torch.autograd.gradcheck(func, inputs)


def test_rows_attend_only_within_their_crystal() -> None:
    """Changing one crystal's keys/values leaves every other crystal's output unchanged."""
    lengths = [4, 3, 5]
    cu = cu_seqlens_of(lengths)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(12, 2, 8, generator=gen) for _ in range(3))
    out = varlen_attention_padded(q, k, v, cu, 5)
    k2, v2 = k.clone(), v.clone()
    k2[4:7] += 1.0
    v2[4:7] -= 2.0
    out2 = varlen_attention_padded(q, k2, v2, cu, 5)
    torch.testing.assert_close(out2[:4], out[:4])
    torch.testing.assert_close(out2[7:], out[7:])
    assert not torch.allclose(out2[4:7], out[4:7])


def test_resolve_backend() -> None:
    assert resolve_backend("torch", "cuda") == "torch"
    assert resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("flash", "cpu")  # type: ignore[arg-type]


def test_works_without_triton(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """With Triton unimportable: ``triton_available()`` is False, "auto" uses torch, "triton" raises clearly."""
    import sys

    from sagnn_lightning import kernels
    from sagnn_lightning.kernels import triton_available

    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.delitem(sys.modules, "sagnn_lightning.kernels.triton_attention", raising=False)
    monkeypatch.delattr(kernels, "triton_attention", raising=False)
    triton_available.cache_clear()
    request.addfinalizer(triton_available.cache_clear)  # later tests re-check with Triton importable again
    assert not triton_available()
    assert resolve_backend("auto", "cuda") == "torch"
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        resolve_backend("triton", "cpu")
    lengths = [2, 3]
    q, k, v = (torch.randn(5, 2, 8, dtype=torch.float64) for _ in range(3))
    cu = cu_seqlens_of(lengths)
    torch.testing.assert_close(
        varlen_attention(q, k, v, cu, 3), dense_block_diagonal(q, k, v, lengths, 1 / math.sqrt(8))
    )
