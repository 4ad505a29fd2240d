"""Triton varlen attention vs the plain-torch reference: values, dQ/dK/dV, dtypes, dropout, input checks.

Runs compiled on CUDA, or through Triton's interpreter on CPU (see ``conftest.py``); shapes are tiny so
the interpreted file stays well under a minute on 2 cores, yet hit every branch: a 1-atom crystal, block
size ± 1 (with 16-row tiles), a multi-tile 300-atom crystal among 5-atom ones, padded head dims
(4, 12, 24, 100 → 16/16/32/128 lanes), heads 1/4/8/16, batches of 1 and 64 crystals.
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


def forward_backward(fn, q, k, v, do):
    """Output and (dq, dk, dv) of ``fn`` at fresh leaf copies of q, k, v."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", [0, 1])
def test_low_precision_error_at_most_twice_torch_path(
    dtype: torch.dtype, seed: int, triton_attention: ModuleType, device: torch.device
) -> None:
    """In fp16/bf16 the kernel's error vs an fp32 reference is ≤ 2× the padded-SDPA path's in the same dtype."""
    lengths, heads, head_dim = [1, 17, 40, 6], 4, 24
    q, k, v, do = random_qkv(lengths, heads, head_dim, dtype, device, seed)
    cu = cu_seqlens_of(lengths, device)
    reference = forward_backward(
        lambda q, k, v: varlen_attention_reference(q, k, v, cu), q.float(), k.float(), v.float(), do.float()
    )
    kernel = forward_backward(
        lambda q, k, v: triton_attention.varlen_attention_triton(q, k, v, cu, max(lengths)), q, k, v, do
    )
    torch_path = forward_backward(lambda q, k, v: varlen_attention_padded(q, k, v, cu, max(lengths)), q, k, v, do)
    assert all(t.dtype == dtype for t in kernel)
    atol = {torch.float16: 5e-3, torch.bfloat16: 4e-2}[dtype]
    for label, err_kernel, err_torch in zip(
        ("out", "dq", "dk", "dv"), max_errors(kernel, reference), max_errors(torch_path, reference)
    ):
        assert err_kernel <= 2 * err_torch + 1e-6, (
            f"{dtype} {label}: kernel error {err_kernel:.3g} > 2 × torch error {err_torch:.3g}"
        )
        assert err_kernel <= atol, f"{dtype} {label}: kernel error {err_kernel:.3g} > {atol}"


def masked_dropout_reference(q, k, v, cu_seqlens, keep, dropout_p):
    """Attention with an explicit keep-mask ``[B, H, L, L]`` applied to normalised probabilities."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for b, (start, end) in enumerate(itertools.pairwise(bounds)):
        n = end - start
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        probs = (qs @ ks.transpose(-1, -2) * scale).softmax(-1)
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
