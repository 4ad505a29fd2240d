"""Triton varlen attention vs the plain-torch reference: values, dQ/dK/dV, dtypes, dropout, input checks.

Runs compiled on CUDA, or through Triton's interpreter on CPU (see ``conftest.py``); shapes are tiny so
the interpreted file stays well under a minute on 2 cores, yet hit every branch: a 1-atom crystal, block
size ± 1 (with 16-row tiles), a multi-tile 300-atom crystal among 5-atom ones, padded head dims
(4, 12, 24, 100 → 16/16/32/128 lanes), heads 1/4/8/16, batches of 1 and 64 crystals. With a key bias:
values and dQ/dK/dV/dbias over a subset of those shapes, with dropout, with ``-inf`` entries (a whole masked
key tile included), and ``bias = log w`` against explicitly fraction-weighted attention.
"""

from __future__ import annotations

import itertools
import math
from types import ModuleType

import pytest
import torch

from sagnn_lightning.kernels import (
    varlen_attention,
    varlen_attention_padded,
    varlen_attention_reference,
)


def cu_seqlens_of(lengths: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor([0] + lengths, dtype=torch.int32, device=device).cumsum(0, dtype=torch.int32)


def random_qkv(lengths: list[int], heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    return [
        torch.randn(total, heads, head_dim, generator=gen).to(device=device, dtype=dtype) for _ in range(4)
    ]  # q, k, v, dO


def random_bias(lengths: list[int], dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    """A ``(total,)`` key bias of O(1) log-weights (std 2, so it reorders the attention noticeably)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    return (2.0 * torch.randn(sum(lengths), generator=gen)).to(device=device, dtype=dtype)


def forward_backward(fn, q, k, v, do, key_bias=None):
    """Output and (dq, dk, dv) of ``fn`` at fresh leaf copies of q, k, v (and dbias, with ``key_bias``)."""
    inputs = (q, k, v) if key_bias is None else (q, k, v, key_bias)
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, do.to(out.dtype))
    return [out.detach(), *grads]


def max_errors(results, reference) -> list[float]:
    return [(r.double() - ref.double()).abs().max().item() for r, ref in zip(results, reference)]


SHAPES = {
    # name: (lengths, heads, head_dim, block_m, block_n)   None = the launcher's heuristic
    "one_atom_crystal": ([1], 4, 8, None, None),
    "block_minus_plus_one": ([15, 16, 17, 1], 2, 16, 16, 16),
    "huge_among_small": ([5] * 6 + [300] + [5] * 4, 1, 8, None, None),
    "heads16_dim12": ([3, 7], 16, 12, None, None),
    "heads8_dim24": ([9, 2, 33], 8, 24, 16, 16),
    "heads4_dim100": ([6, 20], 4, 100, None, None),
    "dim128": ([18], 1, 128, 16, 16),
    "dim4_model_default": ([4, 11], 8, 4, None, None),
    "rectangular_tiles": ([40, 3, 33], 2, 16, 16, 32),
    "batch_of_64": ([(7 * i) % 13 + 1 for i in range(64)], 1, 8, None, None),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_values_and_gradients_float32(name: str, triton_attention: ModuleType, device: torch.device) -> None:
    lengths, heads, head_dim, block_m, block_n = SHAPES[name]
    q, k, v, do = random_qkv(lengths, heads, head_dim, torch.float32, device)
    cu = cu_seqlens_of(lengths, device)
    kernel = forward_backward(
        lambda q, k, v: triton_attention.varlen_attention_triton(
            q, k, v, cu, max(lengths), block_m=block_m, block_n=block_n
        ),
        q,
        k,
        v,
        do,
    )
    reference = forward_backward(
        lambda q, k, v: varlen_attention_reference(q, k, v, cu), q.double(), k.double(), v.double(), do.double()
    )
    for label, got, want in zip(("out", "dq", "dk", "dv"), kernel, reference):
        torch.testing.assert_close(
            got.double(), want, rtol=2e-4, atol=2e-5, msg=lambda m, label=label: f"{name} {label}: {m}"
        )


BIAS_SHAPES = ["one_atom_crystal", "block_minus_plus_one", "huge_among_small", "heads8_dim24", "rectangular_tiles"]


@pytest.mark.parametrize("name", BIAS_SHAPES)
def test_key_bias_values_and_gradients_float32(name: str, triton_attention: ModuleType, device: torch.device) -> None:
    """With a key bias: out, dq, dk, dv and dbias against the float64 reference."""
    lengths, heads, head_dim, block_m, block_n = SHAPES[name]
    q, k, v, do = random_qkv(lengths, heads, head_dim, torch.float32, device)
    bias = random_bias(lengths, torch.float32, device)
    cu = cu_seqlens_of(lengths, device)
    kernel = forward_backward(
        lambda q, k, v, b: triton_attention.varlen_attention_triton(
            q, k, v, cu, max(lengths), block_m=block_m, block_n=block_n, key_bias=b
        ),
        q,
        k,
        v,
        do,
        bias,
    )
    reference = forward_backward(
        lambda q, k, v, b: varlen_attention_reference(q, k, v, cu, key_bias=b),
        *(t.double() for t in (q, k, v, do, bias)),
    )
    for label, got, want in zip(("out", "dq", "dk", "dv", "dbias"), kernel, reference):
        torch.testing.assert_close(
            got.double(), want, rtol=2e-4, atol=2e-5, msg=lambda m, label=label: f"{name} {label}: {m}"
        )


def test_key_bias_gradient_only_when_required(triton_attention: ModuleType, device: torch.device) -> None:
    """A bias without requires_grad gets no gradient (q, k, v's are unchanged); one in another float dtype than
    q (float64 here, read in float32 by the kernel) gets its gradient in its own dtype."""
    lengths = [3, 9]
    q, k, v, do = random_qkv(lengths, 2, 8, torch.float32, device)
    cu = cu_seqlens_of(lengths, device)
    bias = random_bias(lengths, torch.float64, device)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = triton_attention.varlen_attention_triton(*leaves, cu, 9, key_bias=bias)
    out.backward(do)
    assert bias.grad is None and all(t.grad is not None for t in leaves)
    reference = forward_backward(
        lambda q, k, v, b: varlen_attention_reference(q, k, v, cu, key_bias=b),
        *(t.double() for t in (q, k, v, do)),
        bias,
    )
    for got, want in zip([out.detach(), *(t.grad for t in leaves)], reference):
        torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=2e-5)
    bias_leaf = bias.clone().requires_grad_()
    triton_attention.varlen_attention_triton(q, k, v, cu, 9, key_bias=bias_leaf).backward(do)
    assert bias_leaf.grad is not None and bias_leaf.grad.dtype == torch.float64
    torch.testing.assert_close(bias_leaf.grad, reference[4], rtol=2e-4, atol=2e-5)


def attention_without_keys(q, k, v, key_bias, cu_seqlens, keep):
    """Naive attention in which each crystal's queries attend only to its keys with ``keep[j]`` (scores
    ``+ key_bias[j]``); every other key (its bias included) gets a zero gradient."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty_like(q)
    for start, end in itertools.pairwise(cu_seqlens.tolist()):
        kept = torch.arange(start, end, device=q.device)[keep[start:end]]
        scores = torch.einsum("ihd,jhd->hij", q[start:end], k[kept]) * scale + key_bias[kept]
        out[start:end] = torch.einsum("hij,jhd->ihd", scores.softmax(-1), v[kept])
    return out


def test_minus_inf_key_bias_removes_keys(triton_attention: ModuleType, device: torch.device) -> None:
    """A ``-inf`` bias = that key removed: values and gradients (zero dk, dv, dbias on the removed keys). The
    first 16-key tile of the 40-atom crystal is all masked (the online softmax starts on an all -inf tile)."""
    lengths, heads, head_dim = [1, 40, 17, 5], 2, 12
    q, k, v, do = random_qkv(lengths, heads, head_dim, torch.float32, device)
    bias = random_bias(lengths, torch.float32, device)
    cu = cu_seqlens_of(lengths, device)
    gen = torch.Generator().manual_seed(3)
    keep = torch.rand(sum(lengths), generator=gen) > 0.3
    keep[1:17] = False  # crystal 2's first tile (block 16)
    keep[[0, 40, 57, 62]] = True  # at least one finite key per crystal (its last one)
    keep = keep.to(device)
    kernel = forward_backward(
        lambda q, k, v, b: triton_attention.varlen_attention_triton(
            q, k, v, cu, max(lengths), key_bias=torch.where(keep, b, float("-inf")), block_m=16, block_n=16
        ),
        q,
        k,
        v,
        do,
        bias,
    )
    removed = forward_backward(
        lambda q, k, v, b: attention_without_keys(q, k, v, b, cu, keep), *(t.double() for t in (q, k, v, do, bias))
    )
    for label, got, want in zip(("out", "dq", "dk", "dv", "dbias"), kernel, removed):
        torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=2e-5, msg=lambda m, label=label: f"{label}: {m}")
    for label, grad in zip(("dk", "dv", "dbias"), kernel[2:]):
        assert (grad[~keep] == 0).all(), f"{label} of a removed key is not 0"


def test_fully_masked_crystal_gives_zeros_like_the_torch_path(
    triton_attention: ModuleType, device: torch.device
) -> None:
    """Outside the contract (every key of a crystal at -inf): zero rows and zero gradients, as the padded SDPA
    path gives, not NaN (which would fail ``backend="auto"``'s self-check on such a batch); the rest unaffected."""
    lengths = [3, 2, 4]
    q, k, v, do = random_qkv(lengths, 2, 8, torch.float32, device)
    cu = cu_seqlens_of(lengths, device)
    bias = random_bias(lengths, torch.float32, device)
    bias[3:5] = float("-inf")
    kernel = forward_backward(
        lambda q, k, v, b: triton_attention.varlen_attention_triton(q, k, v, cu, 4, key_bias=b), q, k, v, do, bias
    )
    torch_path = forward_backward(
        lambda q, k, v, b: varlen_attention_padded(q, k, v, cu, 4, key_bias=b), q, k, v, do, bias
    )
    assert (kernel[0][3:5] == 0).all() and all((g[3:5] == 0).all() for g in kernel[1:])
    for label, got, want in zip(("out", "dq", "dk", "dv", "dbias"), kernel, torch_path):
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-5, msg=lambda m, label=label: f"{label}: {m}")


def test_log_weight_bias_is_fraction_weighted_attention(triton_attention: ModuleType, device: torch.device) -> None:
    """``key_bias = log w`` (w: per-crystal normalised weights, e.g. element fractions) is
    ``Σ_j w_j exp(s_ij) v_j / Σ_j w_j exp(s_ij)``, written out naively; gradients w.r.t. w through the log too."""
    lengths, heads, head_dim = [1, 3, 20, 7], 4, 6
    q, k, v, do = random_qkv(lengths, heads, head_dim, torch.float32, device)
    cu = cu_seqlens_of(lengths, device)
    logits = random_bias(lengths, torch.float32, device, seed=1)
    w = torch.cat([logits[a:b].softmax(0) for a, b in itertools.pairwise(cu.tolist())])

    def weighted(q, k, v, w):
        out = torch.empty_like(q)
        for start, end in itertools.pairwise(cu.tolist()):
            e = torch.exp(torch.einsum("ihd,jhd->hij", q[start:end], k[start:end]) / math.sqrt(head_dim))
            num = torch.einsum("hij,j,jhd->ihd", e, w[start:end], v[start:end])
            out[start:end] = num / torch.einsum("hij,j->ih", e, w[start:end])[..., None]
        return out

    kernel = forward_backward(
        lambda q, k, v, w: triton_attention.varlen_attention_triton(q, k, v, cu, max(lengths), key_bias=w.log()),
        q,
        k,
        v,
        do,
        w,
    )
    explicit = forward_backward(weighted, *(t.double() for t in (q, k, v, do, w)))
    for label, got, want in zip(("out", "dq", "dk", "dv", "dw"), kernel, explicit):
        torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=2e-5, msg=lambda m, label=label: f"{label}: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed, with_bias", [(0, False), (1, False), (0, True)])
def test_low_precision_error_at_most_twice_torch_path(
    dtype: torch.dtype, seed: int, with_bias: bool, triton_attention: ModuleType, device: torch.device
) -> None:
    """In fp16/bf16 the kernel's error vs an fp32 reference is ≤ 2× the padded-SDPA path's in the same dtype
    (with a float32 key bias: dbias too; the kernel reads it in float32, the torch path in q's dtype)."""
    lengths, heads, head_dim = [1, 17, 40, 6], 4, 24
    q, k, v, do = random_qkv(lengths, heads, head_dim, dtype, device, seed)
    cu = cu_seqlens_of(lengths, device)
    bias = random_bias(lengths, torch.float32, device, seed) if with_bias else None
    extra = () if bias is None else (bias,)
    reference = forward_backward(
        lambda q, k, v, *b: varlen_attention_reference(q, k, v, cu, key_bias=b[0] if b else None),
        *(t.float() for t in (q, k, v, do)),
        *extra,
    )
    kernel = forward_backward(
        lambda q, k, v, *b: triton_attention.varlen_attention_triton(
            q, k, v, cu, max(lengths), key_bias=b[0] if b else None
        ),
        q,
        k,
        v,
        do,
        *extra,
    )
    torch_path = forward_backward(
        lambda q, k, v, *b: varlen_attention_padded(q, k, v, cu, max(lengths), key_bias=b[0] if b else None),
        q,
        k,
        v,
        do,
        *extra,
    )
    assert all(t.dtype == dtype for t in kernel[:4])
    atol = {torch.float16: 5e-3, torch.bfloat16: 4e-2}[dtype]
    for label, err_kernel, err_torch in zip(
        ("out", "dq", "dk", "dv", "dbias"), max_errors(kernel, reference), max_errors(torch_path, reference)
    ):
        assert err_kernel <= 2 * err_torch + 1e-6, (
            f"{dtype} {label}: kernel error {err_kernel:.3g} > 2 × torch error {err_torch:.3g}"
        )
        assert err_kernel <= atol, f"{dtype} {label}: kernel error {err_kernel:.3g} > {atol}"


def masked_dropout_reference(q, k, v, cu_seqlens, keep, dropout_p, key_bias=None):
    """Attention with an explicit keep-mask ``[B, H, L, L]`` applied to normalised probabilities."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for b, (start, end) in enumerate(itertools.pairwise(bounds)):
        n = end - start
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        scores = qs @ ks.transpose(-1, -2) * scale
        if key_bias is not None:
            scores = scores + key_bias[start:end]
        probs = scores.softmax(-1)
        probs = probs * keep[b, :, :n, :n].to(probs.dtype) / (1.0 - dropout_p)
        out[start:end] = (probs @ vs).transpose(0, 1)
    return out


def test_dropout_matches_masked_reference(triton_attention: ModuleType, device: torch.device) -> None:
    lengths, heads, head_dim, p, seed = [1, 17, 9], 2, 8, 0.3, 1234
    q, k, v, do = random_qkv(lengths, heads, head_dim, torch.float32, device)
    cu = cu_seqlens_of(lengths, device)
    keep = triton_attention.dropout_keep_mask(cu, heads, max(lengths), p, seed)
    kernel = forward_backward(
        lambda q, k, v: triton_attention.varlen_attention_triton(
            q, k, v, cu, max(lengths), dropout_p=p, seed=seed, block_m=16, block_n=16
        ),
        q,
        k,
        v,
        do,
    )
    reference = forward_backward(
        lambda q, k, v: masked_dropout_reference(q, k, v, cu, keep, p), q.double(), k.double(), v.double(), do.double()
    )
    for label, got, want in zip(("out", "dq", "dk", "dv"), kernel, reference):
        torch.testing.assert_close(
            got.double(), want, rtol=2e-4, atol=2e-5, msg=lambda m, label=label: f"dropout {label}: {m}"
        )
    # the mask is a deterministic function of the seed, is not all-keep, and differs across seeds and heads
    rerun = triton_attention.varlen_attention_triton(q, k, v, cu, max(lengths), dropout_p=p, seed=seed)
    torch.testing.assert_close(rerun, kernel[0])
    assert not torch.equal(keep, triton_attention.dropout_keep_mask(cu, heads, max(lengths), p, seed + 1))
    assert not torch.equal(keep[:, 0], keep[:, 1])


def test_dropout_with_key_bias_matches_masked_reference(triton_attention: ModuleType, device: torch.device) -> None:
    lengths, heads, head_dim, p, seed = [1, 17, 9], 2, 8, 0.3, 99
    q, k, v, do = random_qkv(lengths, heads, head_dim, torch.float32, device)
    bias = random_bias(lengths, torch.float32, device)
    cu = cu_seqlens_of(lengths, device)
    keep = triton_attention.dropout_keep_mask(cu, heads, max(lengths), p, seed)
    kernel = forward_backward(
        lambda q, k, v, b: triton_attention.varlen_attention_triton(
            q, k, v, cu, max(lengths), dropout_p=p, seed=seed, block_m=16, block_n=16, key_bias=b
        ),
        q,
        k,
        v,
        do,
        bias,
    )
    reference = forward_backward(
        lambda q, k, v, b: masked_dropout_reference(q, k, v, cu, keep, p, key_bias=b),
        *(t.double() for t in (q, k, v, do, bias)),
    )
    for label, got, want in zip(("out", "dq", "dk", "dv", "dbias"), kernel, reference):
        torch.testing.assert_close(
            got.double(), want, rtol=2e-4, atol=2e-5, msg=lambda m, label=label: f"dropout + bias {label}: {m}"
        )


def test_dropout_keep_rate(triton_attention: ModuleType, device: torch.device) -> None:
    lengths, heads, p = [64, 64], 2, 0.25
    keep = triton_attention.dropout_keep_mask(cu_seqlens_of(lengths, device), heads, 64, p, seed=7)
    rate = keep.float().mean().item()  # 16,384 Bernoulli(0.75) draws: std ≈ 0.0034
    assert abs(rate - (1 - p)) < 0.02, rate


def test_dispatch_and_int64_cu_seqlens(triton_attention: ModuleType, device: torch.device) -> None:
    lengths = [3, 1, 12]
    q, k, v, _ = random_qkv(lengths, 4, 8, torch.float32, device)
    cu = cu_seqlens_of(lengths, device)
    expected = varlen_attention_reference(q, k, v, cu)
    torch.testing.assert_close(
        varlen_attention(q, k, v, cu.long(), max(lengths), backend="triton"), expected, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        triton_attention.varlen_attention_triton(q, k, v, cu.long(), max(lengths)), expected, rtol=1e-4, atol=1e-5
    )
    bias = random_bias(lengths, torch.float32, device)
    torch.testing.assert_close(
        varlen_attention(q, k, v, cu.long(), max(lengths), backend="triton", key_bias=bias),
        varlen_attention(q, k, v, cu.long(), max(lengths), backend="torch", key_bias=bias),
        rtol=1e-4,
        atol=1e-5,
    )


def test_launch_variant_tells_bias_apart(triton_attention: ModuleType) -> None:
    """A key bias is another compiled variant (``HAS_BIAS``); its dtype is not (the kernels read float32)."""
    q = torch.empty(10, 2, 8)
    plain = triton_attention.launch_variant(q, 10)
    with_bias = triton_attention.launch_variant(q, 10, 0.0, torch.zeros(10))
    assert plain != with_bias
    assert with_bias == triton_attention.launch_variant(q, 10, 0.0, torch.zeros(10, dtype=torch.float64))


def test_empty_sequence_and_custom_scale(triton_attention: ModuleType, device: torch.device) -> None:
    lengths = [4, 0, 3]
    q, k, v, _ = random_qkv(lengths, 2, 8, torch.float32, device)
    cu = cu_seqlens_of(lengths, device)
    got = triton_attention.varlen_attention_triton(q, k, v, cu, 4, scale=0.2)
    torch.testing.assert_close(got, varlen_attention_reference(q, k, v, cu, scale=0.2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("float64", TypeError, "float32, float16 and bfloat16"),
        ("head_dim_256", ValueError, "head_dim in"),
        ("non_contiguous", ValueError, "contiguous"),
        ("shape_mismatch", ValueError, "must match"),
        ("cu_float", ValueError, "int32"),
        ("wrong_total", ValueError, "cu_seqlens\\[-1\\] == total \\(False\\)"),
        ("max_seqlen_too_small", ValueError, "every length <= max_seqlen \\(False\\)"),
        ("dropout_1", ValueError, "dropout_p"),
        ("block_24", ValueError, "power of two"),
        ("key_bias_2d", ValueError, "key_bias must be 1-D \\(total,\\) = \\(8,\\)"),
        ("key_bias_length", ValueError, "got shape \\(7,\\)"),
        ("key_bias_device", ValueError, "key_bias is on meta"),
        ("key_bias_int", ValueError, "key_bias must be a floating-point tensor, got torch.int64"),
    ],
)
def test_input_checks(case: str, error: type, match: str, triton_attention: ModuleType, device: torch.device) -> None:
    lengths = [3, 5]
    q, k, v, _ = random_qkv(lengths, 2, 8, torch.float32, device)
    cu, max_seqlen, kwargs = cu_seqlens_of(lengths, device), 5, {}
    if case == "float64":
        q, k, v = q.double(), k.double(), v.double()
    elif case == "head_dim_256":
        q, k, v, _ = random_qkv(lengths, 1, 256, torch.float32, device)
    elif case == "non_contiguous":
        q = torch.randn(2, 8, 8, device=device).transpose(0, 1)
    elif case == "shape_mismatch":
        k = k[:-1]
    elif case == "cu_float":
        cu = cu.float()
    elif case == "wrong_total":
        cu = cu_seqlens_of([3, 4], device)
    elif case == "max_seqlen_too_small":
        max_seqlen = 4
    elif case == "dropout_1":
        kwargs = {"dropout_p": 1.0}
    elif case == "block_24":
        kwargs = {"block_m": 24}
    elif case == "key_bias_2d":
        kwargs = {"key_bias": torch.zeros(8, 2, device=device)}  # per head: not supported
    elif case == "key_bias_length":
        kwargs = {"key_bias": torch.zeros(7, device=device)}
    elif case == "key_bias_device":
        kwargs = {"key_bias": torch.zeros(8, device="meta")}
    elif case == "key_bias_int":
        kwargs = {"key_bias": torch.zeros(8, dtype=torch.long, device=device)}
    with pytest.raises(error, match=match):
        triton_attention.varlen_attention_triton(q, k, v, cu, max_seqlen, **kwargs)


def test_atom_self_attention_backends_agree(triton_attention: ModuleType, device: torch.device) -> None:
    """Through ``AtomSelfAttention``: output and every parameter/input gradient, Triton vs torch."""
    from sagnn_lightning.nn.attention import AtomSelfAttention

    lengths, dim, heads = [1, 6, 17, 3], 32, 4
    ptr = torch.tensor([0] + lengths, device=device).cumsum(0)  # int64, like a PyG batch
    torch.manual_seed(0)
    torch_layer = AtomSelfAttention(dim, heads=heads, backend="torch").to(device)
    triton_layer = AtomSelfAttention(dim, heads=heads, backend="triton").to(device)
    triton_layer.load_state_dict(torch_layer.state_dict())
    x = torch.randn(sum(lengths), dim, device=device)
    results = []
    for layer in (torch_layer, triton_layer):
        xi = x.clone().requires_grad_()
        out = layer(xi, ptr, max(lengths))
        out.pow(2).sum().backward()
        results.append((out.detach(), xi.grad, {n: p.grad for n, p in layer.named_parameters()}))
    (out_t, gx_t, gp_t), (out_k, gx_k, gp_k) = results
    torch.testing.assert_close(out_k, out_t, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx_k, gx_t, rtol=1e-4, atol=1e-4)
    for name in gp_t:
        torch.testing.assert_close(
            gp_k[name], gp_t[name], rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"grad {name}: {m}"
        )


def test_supports(triton_attention: ModuleType) -> None:
    """What ``backend="auto"`` hands to the kernel (float64 and head_dim > 128 go to torch)."""
    assert triton_attention.supports(torch.empty(2, 1, 4, dtype=torch.bfloat16))
    assert triton_attention.supports(torch.empty(2, 1, 128, dtype=torch.float16))
    assert not triton_attention.supports(torch.empty(2, 1, 8, dtype=torch.float64))
    assert not triton_attention.supports(torch.empty(2, 1, 256, dtype=torch.float32))


def test_sagnn_trains_with_triton_backend(triton_attention: ModuleType, device: torch.device) -> None:
    """The whole SA-GNN (attention after every block) on real matbench crystals: same predictions, gradients
    and three Adam steps' losses with the Triton backend as with the torch backend."""
    from sagnn_lightning.data import collate_graphs
    from sagnn_lightning.models import SAGNN
    from tests.models.physics import graph, load_fixture_structures

    batch = collate_graphs([graph(s, mbid) for mbid, s in load_fixture_structures()]).to(device)
    target = torch.linspace(-1.0, 1.0, batch.num_graphs, device=device)[:, None]
    losses = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        model = SAGNN(attention="each", num_blocks=2, heads=2, attention_backend=backend).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses[backend] = []
        for _ in range(3):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(batch), target)
            loss.backward()
            optimizer.step()
            losses[backend].append(loss.item())
    torch.testing.assert_close(torch.tensor(losses["triton"]), torch.tensor(losses["torch"]), rtol=1e-4, atol=1e-6)
    assert losses["triton"][-1] < losses["triton"][0]
