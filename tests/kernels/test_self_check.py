"""``backend="auto"``'s self-check of the Triton kernel (:mod:`sagnn_lightning.kernels.self_check`), on CPU.

The check takes the kernel and the reference as callables, so it runs here with the real kernel under
``TRITON_INTERPRET=1`` (it passes, and the kernel is used afterwards) and with deliberately broken kernels
(output × 1.01, a dV × 1.1 gradient, NaN output, an exception in the forward or the backward): each warns
exactly once and the PyTorch path is used afterwards, with correct values and gradients. The dispatch wiring
("auto" on CUDA → checked kernel; "triton" → the kernel, never a fallback) runs on CPU with the backend
resolution forced to Triton. With a key bias: the real kernel passes (a separate check from the bias-free
variant), a wrong bias gradient or an ignored bias fails, and callables without a ``key_bias`` argument still
serve bias-free calls.
"""

from __future__ import annotations

import warnings
from types import ModuleType

import pytest
import torch

from sagnn_lightning.kernels import (
    KernelFallbackWarning,
    KernelSelfCheck,
    checked_triton_attention,
    dispatch,
    varlen_attention,
    varlen_attention_padded,
    varlen_attention_reference,
)
from sagnn_lightning.kernels.self_check import compare_with_reference, tolerance

LENGTHS, HEADS, HEAD_DIM = [1, 5, 17, 3], 2, 8


class Counted:
    """A callable that counts its calls."""

    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def torch_path(q, k, v, cu_seqlens, max_seqlen, *, dropout_p=0.0, scale=None, validate=True, key_bias=None):
    """The PyTorch path with the kernel's signature (a correct "kernel")."""
    return varlen_attention_padded(q, k, v, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale, key_bias=key_bias)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward, gradient × ``factor`` backward (a kernel with a wrong backward)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class _RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("simulated PTX compile failure in the backward kernel")


def _raise_in_forward(*args, **kwargs):
    raise RuntimeError("simulated triton.CompilationError in the forward kernel")


BROKEN = {
    "output_x1.01": lambda q, k, v, *a, **kw: torch_path(q, k, v, *a, **kw) * 1.01,
    "dv_gradient_x1.1": lambda q, k, v, *a, **kw: torch_path(q, k, _ScaleGradient.apply(v, 1.1), *a, **kw),
    "nan_output": lambda q, k, v, *a, **kw: torch_path(q, k, v, *a, **kw) * float("nan"),
    "raises_in_forward": _raise_in_forward,
    "raises_in_backward": lambda q, k, v, *a, **kw: _RaiseInBackward.apply(torch_path(q, k, v, *a, **kw)),
}


def batch(
    device: torch.device,
    seed: int = 0,
    lengths: list[int] = LENGTHS,
    dtype: torch.dtype = torch.float32,
    heads: int = HEADS,
    head_dim: int = HEAD_DIM,
):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v, do = (torch.randn(total, heads, head_dim, generator=gen).to(device, dtype) for _ in range(4))
    cu = torch.tensor([0] + lengths).cumsum(0).to(device, torch.int32)
    return q, k, v, do, cu, max(lengths)


def run(fn, q, k, v, do, cu, max_seqlen, **kwargs):
    """``[out, dq, dk, dv]`` of ``fn`` at leaf copies of q, k, v."""
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, cu, max_seqlen, **kwargs)
    return [out.detach(), *torch.autograd.grad(out, leaves, do)]


def expected(q, k, v, do, cu, max_seqlen):
    """The oracle in float64."""
    return run(
        lambda q, k, v, cu, m: varlen_attention_reference(q, k, v, cu),
        q.double(),
        k.double(),
        v.double(),
        do.double(),
        cu,
        max_seqlen,
    )


def assert_correct(got, want) -> None:
    assert len(got) == len(want)
    for label, g, w in zip(("out", "dq", "dk", "dv", "dbias"), got, want):
        torch.testing.assert_close(g.double(), w, rtol=2e-4, atol=2e-5, msg=lambda m, label=label: f"{label}: {m}")


def key_bias_of(q: torch.Tensor, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + seed)
    return (2.0 * torch.randn(q.shape[0], generator=gen)).to(q.device)


def run_with_bias(fn, q, k, v, bias, do, cu, max_seqlen, **kwargs):
    """``[out, dq, dk, dv, dbias]`` of ``fn`` at leaf copies of q, k, v and the key bias."""
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    out = fn(*leaves[:3], cu, max_seqlen, key_bias=leaves[3], **kwargs)
    return [out.detach(), *torch.autograd.grad(out, leaves, do)]


def expected_with_bias(q, k, v, bias, do, cu, max_seqlen):
    """The oracle in float64, with the key bias."""
    return run_with_bias(
        lambda q, k, v, cu, m, key_bias: varlen_attention_reference(q, k, v, cu, key_bias=key_bias),
        *(t.double() for t in (q, k, v, bias, do)),
        cu,
        max_seqlen,
    )


BROKEN_WITH_BIAS = {
    "dbias_gradient_x1.1": lambda q, k, v, *a, key_bias, **kw: torch_path(
        q, k, v, *a, key_bias=_ScaleGradient.apply(key_bias, 1.1), **kw
    ),
    "ignores_the_bias": lambda q, k, v, *a, key_bias, **kw: torch_path(q, k, v, *a, key_bias=key_bias * 0.0, **kw),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_kernel_warns_once_then_uses_the_torch_path(name: str, device: torch.device) -> None:
    kernel, reference = Counted(BROKEN[name]), Counted(torch_path)
    check = KernelSelfCheck(kernel, reference, name="test kernel")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(3):
            q, k, v, do, cu, max_seqlen = batch(device, seed)
            assert_correct(run(check, q, k, v, do, cu, max_seqlen), expected(q, k, v, do, cu, max_seqlen))
            if seed == 0:
                calls_after_check = kernel.calls
    fallbacks = [w for w in caught if issubclass(w.category, KernelFallbackWarning)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]
    message = str(fallbacks[0].message)
    assert "test kernel failed its self-check" in message and f"{q.device} float32" in message
    assert ("raised RuntimeError: simulated" in message) == name.startswith("raises")
    assert kernel.calls == calls_after_check == 1  # run once inside the check, never afterwards
    assert reference.calls == 1 + 3  # the check's reference run + every call
    assert check.uses_kernel(q, max_seqlen) is False and list(check.failures) == [(str(q.device), torch.float32)]
    # a fallback holds for every variant of the (device, dtype): other shapes go straight to the reference
    q, k, v, do, cu, max_seqlen = batch(device, 3, [40, 2])
    assert_correct(run(check, q, k, v, do, cu, max_seqlen), expected(q, k, v, do, cu, max_seqlen))
    assert kernel.calls == 1
    # another dtype is another verdict
    assert check.uses_kernel(q.double(), max_seqlen) is None


@pytest.mark.parametrize("name", list(BROKEN_WITH_BIAS))
def test_kernel_broken_with_a_bias_fails_its_bias_check(name: str, device: torch.device) -> None:
    """Right without a bias, wrong with one: the bias-free call passes, the first call with a bias fails (naming
    dbias or out), warns once, and gets the reference's values and bias gradient."""
    broken = BROKEN_WITH_BIAS[name]
    kernel = Counted(
        lambda *a, key_bias=None, **kw: (
            torch_path(*a, **kw) if key_bias is None else broken(*a, key_bias=key_bias, **kw)
        )
    )
    check = KernelSelfCheck(kernel, torch_path, name="test kernel")
    q, k, v, do, cu, max_seqlen = batch(device, 0)
    bias = key_bias_of(q)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert_correct(run(check, q, k, v, do, cu, max_seqlen), expected(q, k, v, do, cu, max_seqlen))
        assert check.uses_kernel(q, max_seqlen) is True and check.uses_kernel(q, max_seqlen, key_bias=bias) is None
        for _ in range(2):
            assert_correct(
                run_with_bias(check, q, k, v, bias, do, cu, max_seqlen),
                expected_with_bias(q, k, v, bias, do, cu, max_seqlen),
            )
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, KernelFallbackWarning)]
    assert len(fallbacks) == 1, fallbacks
    assert f"({'dbias' if name.startswith('dbias') else 'out'}: max |kernel - reference|" in fallbacks[0]
    assert kernel.calls == 3  # check + use without a bias, the check with one
    assert check.uses_kernel(q, max_seqlen, key_bias=bias) is False


def test_correct_kernel_passes_with_a_key_bias(triton_attention: ModuleType, device: torch.device) -> None:
    """The real kernel passes with a bias too; with and without a bias are separate verdicts (checked once each)."""
    kernel, reference = Counted(triton_attention.varlen_attention_triton), Counted(torch_path)
    check = KernelSelfCheck(kernel, reference, variant=triton_attention.launch_variant)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        q, k, v, do, cu, max_seqlen = batch(device, 0)
        bias = key_bias_of(q)
        bias[[1, 6, 7, 23]] = float("-inf")  # masked keys (each crystal keeps a finite one)
        check(q, k, v, cu, max_seqlen)
        assert (kernel.calls, reference.calls) == (2, 1)
        assert check.uses_kernel(q, max_seqlen, key_bias=bias) is None
        for seed in range(2):
            q, k, v, do, cu, max_seqlen = batch(device, seed)
            assert_correct(
                run_with_bias(check, q, k, v, bias, do, cu, max_seqlen),
                expected_with_bias(q, k, v, bias, do, cu, max_seqlen),
            )
        assert (kernel.calls, reference.calls) == (5, 2)  # one more check (kernel + reference), then the kernel
        assert check.uses_kernel(q, max_seqlen, key_bias=bias) is True
    assert not check.failures


def test_callables_without_key_bias_serve_bias_free_calls(device: torch.device) -> None:
    """``key_bias`` is only passed to calls that have one: older kernel/reference signatures keep working."""

    def no_bias(q, k, v, cu_seqlens, max_seqlen, *, dropout_p=0.0, scale=None, validate=True):
        return varlen_attention_padded(q, k, v, cu_seqlens, max_seqlen, dropout_p=dropout_p, scale=scale)

    q, k, v, do, cu, max_seqlen = batch(device, 0)
    assert compare_with_reference(no_bias, no_bias, q, k, v, cu, max_seqlen) is None
    check = KernelSelfCheck(no_bias, no_bias, variant=lambda q, m, p, b: (q.shape[-1], b is not None))
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        assert_correct(run(check, q, k, v, do, cu, max_seqlen), expected(q, k, v, do, cu, max_seqlen))
    assert check.uses_kernel(q, max_seqlen) is True


def test_correct_kernel_passes_and_is_used_afterwards(triton_attention: ModuleType, device: torch.device) -> None:
    """The real kernel (interpreted on CPU) passes; the check runs once per compiled variant."""
    kernel, reference = Counted(triton_attention.varlen_attention_triton), Counted(torch_path)
    check = KernelSelfCheck(kernel, reference, variant=triton_attention.launch_variant)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        q, k, v, do, cu, max_seqlen = batch(device, 0)
        assert check.uses_kernel(q, max_seqlen) is None
        assert_correct(run(check, q, k, v, do, cu, max_seqlen), expected(q, k, v, do, cu, max_seqlen))
        assert (kernel.calls, reference.calls) == (2, 1)  # check (kernel + reference), then the kernel
        assert check.uses_kernel(q, max_seqlen) is True
        q, k, v, do, cu, max_seqlen = batch(device, 1)  # same variant: no new check
        assert_correct(run(check, q, k, v, do, cu, max_seqlen), expected(q, k, v, do, cu, max_seqlen))
        assert (kernel.calls, reference.calls) == (3, 1)
        q, k, v, do, cu, max_seqlen = batch(
            device, 2, [33, 4]
        )  # 64-row tiles instead of 32: a new variant, checked once
        assert triton_attention.launch_variant(q, 33) != triton_attention.launch_variant(q, 17)
        assert_correct(run(check, q, k, v, do, cu, max_seqlen), expected(q, k, v, do, cu, max_seqlen))
        assert (kernel.calls, reference.calls) == (5, 2)
    assert not check.failures


def test_check_works_in_inference_mode_and_leaves_the_rng_alone(
    triton_attention: ModuleType, device: torch.device
) -> None:
    """First call inside ``predict``/``validate`` (inference mode): the check still runs its backward. The
    check (here with dropout, which it runs once more) does not consume the global RNG."""
    q, k, v, _, cu, max_seqlen = batch(device, 0)
    check = KernelSelfCheck(
        triton_attention.varlen_attention_triton, torch_path, variant=triton_attention.launch_variant
    )
    with torch.inference_mode():
        out = check(q, k, v, cu, max_seqlen)
    assert check.uses_kernel(q, max_seqlen) is True
    assert not check.failures
    torch.testing.assert_close(out, varlen_attention_reference(q, k, v, cu), rtol=2e-4, atol=2e-5)

    torch.manual_seed(123)
    direct = triton_attention.varlen_attention_triton(q, k, v, cu, max_seqlen, dropout_p=0.25)
    after_direct = torch.get_rng_state()
    torch.manual_seed(123)
    checked = check(q, k, v, cu, max_seqlen, dropout_p=0.25)  # new variant (dropout): checked, then the kernel
    assert check.uses_kernel(q, max_seqlen, 0.25) is True
    assert torch.equal(torch.get_rng_state(), after_direct)
    torch.testing.assert_close(checked, direct)  # same seed drawn → same dropout mask


def test_check_passes_on_inputs_made_in_inference_mode(triton_attention: ModuleType, device: torch.device) -> None:
    """As in ``validate``/``predict``: q, k, v **and cu_seqlens** are inference tensors (the kernel's
    autograd.Function saves cu_seqlens for backward; an inference tensor there made the check fail on a GPU)."""
    q, k, v, _, cu, max_seqlen = batch(device, 0)
    check = KernelSelfCheck(
        triton_attention.varlen_attention_triton, torch_path, variant=triton_attention.launch_variant
    )
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("error", KernelFallbackWarning)
        q, k, v, cu = (t.clone() for t in (q, k, v, cu))
        assert q.is_inference() and cu.is_inference()
        out = check(q, k, v, cu, max_seqlen)
        bias = key_bias_of(q)  # an inference tensor too: the check differentiates a normal copy
        out_bias = check(q, k, v, cu, max_seqlen, key_bias=bias)
    assert check.uses_kernel(q, max_seqlen) is True and not check.failures
    assert check.uses_kernel(q, max_seqlen, key_bias=bias) is True
    torch.testing.assert_close(out, varlen_attention_reference(q, k, v, cu), rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(out_bias, varlen_attention_reference(q, k, v, cu, key_bias=bias), rtol=2e-4, atol=2e-5)


def test_nonfinite_inputs_give_no_verdict(device: torch.device) -> None:
    """A batch on which the reference itself is NaN says nothing about the kernel: no verdict, no warning."""
    kernel, reference = Counted(torch_path), Counted(torch_path)
    check = KernelSelfCheck(kernel, reference)
    q, k, v, do, cu, max_seqlen = batch(device, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        out = check(q * float("nan"), k, v, cu, max_seqlen)
        assert torch.isnan(out).all() and check.uses_kernel(q, max_seqlen) is None and kernel.calls == 0
        check(q, k, v, cu, max_seqlen)
    assert check.uses_kernel(q, max_seqlen) is True and kernel.calls == 2


def test_compare_with_reference_and_tolerance(device: torch.device) -> None:
    q, k, v, _, cu, max_seqlen = batch(device, 0)
    assert compare_with_reference(torch_path, torch_path, q, k, v, cu, max_seqlen) is None
    reason = compare_with_reference(BROKEN["dv_gradient_x1.1"], torch_path, q, k, v, cu, max_seqlen)
    assert reason is not None and reason.startswith("dv:")
    bias = key_bias_of(q)
    assert compare_with_reference(torch_path, torch_path, q, k, v, cu, max_seqlen, key_bias=bias) is None
    reason = compare_with_reference(
        BROKEN_WITH_BIAS["dbias_gradient_x1.1"], torch_path, q, k, v, cu, max_seqlen, key_bias=bias
    )
    assert reason is not None and reason.startswith("dbias:")
    within = lambda q, k, v, *a, **kw: torch_path(q, k, v, *a, **kw) * (1 + tolerance(torch.float32) / 4)  # noqa: E731
    assert compare_with_reference(within, torch_path, q, k, v, cu, max_seqlen) is None
    assert tolerance(torch.float16) > tolerance(torch.float32) and tolerance(torch.bfloat16) > tolerance(torch.float16)
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert tolerance(torch.float32) == tolerance(torch.float16)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture()
def auto_resolves_to_triton(triton_attention: ModuleType, monkeypatch: pytest.MonkeyPatch):
    """Pretend the inputs are on CUDA: ``resolve_backend`` sends "auto" to Triton, with fresh verdicts."""
    real = dispatch.resolve_backend
    monkeypatch.setattr(
        dispatch,
        "resolve_backend",
        lambda backend, device_type: "triton" if backend == "auto" else real(backend, device_type),
    )
    checked_triton_attention.cache_clear()
    yield triton_attention
    checked_triton_attention.cache_clear()


def test_auto_dispatch_falls_back_and_triton_never_does(
    auto_resolves_to_triton: ModuleType, device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    triton_attention = auto_resolves_to_triton
    wrong = Counted(BROKEN["output_x1.01"])
    monkeypatch.setattr(triton_attention, "varlen_attention_triton", wrong)
    q, k, v, do, cu, max_seqlen = batch(device, 0)
    want = expected(q, k, v, do, cu, max_seqlen)
    with pytest.warns(KernelFallbackWarning, match="The Triton attention kernel failed its self-check") as caught:
        for _ in range(3):
            assert_correct(run(lambda *a: varlen_attention(*a, backend="auto"), q, k, v, do, cu, max_seqlen), want)
    assert len([w for w in caught if issubclass(w.category, KernelFallbackWarning)]) == 1
    assert wrong.calls == 1 and checked_triton_attention().uses_kernel(q, max_seqlen) is False
    # explicit "triton": the kernel itself, wrong or raising, without a check or a fallback
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        torch.testing.assert_close(varlen_attention(q, k, v, cu, max_seqlen, backend="triton"), want[0].float() * 1.01)
        monkeypatch.setattr(triton_attention, "varlen_attention_triton", _raise_in_forward)
        with pytest.raises(RuntimeError, match="simulated"):
            varlen_attention(q, k, v, cu, max_seqlen, backend="triton")


def test_auto_dispatch_uses_a_passing_kernel(
    auto_resolves_to_triton: ModuleType, device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    triton_attention = auto_resolves_to_triton
    kernel = Counted(triton_attention.varlen_attention_triton)
    monkeypatch.setattr(triton_attention, "varlen_attention_triton", kernel)
    q, k, v, do, cu, max_seqlen = batch(device, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        for _ in range(2):
            assert_correct(
                run(lambda *a: varlen_attention(*a, backend="auto"), q, k, v, do, cu, max_seqlen),
                expected(q, k, v, do, cu, max_seqlen),
            )
    assert kernel.calls == 3  # the check, then once per call
    # float64 is not the kernel's: "auto" sends it to torch without a check
    varlen_attention(q.double(), k.double(), v.double(), cu, max_seqlen, backend="auto")
    assert kernel.calls == 3
    # a key bias reaches the kernel through its own check
    bias = key_bias_of(q)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KernelFallbackWarning)
        assert_correct(
            run_with_bias(
                lambda *a, **kw: varlen_attention(*a, backend="auto", **kw), q, k, v, bias, do, cu, max_seqlen
            ),
            expected_with_bias(q, k, v, bias, do, cu, max_seqlen),
        )
    assert kernel.calls == 5 and checked_triton_attention().uses_kernel(q, max_seqlen, key_bias=bias) is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernel's own verdict needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [4, 16, 64])
def test_compiled_kernel_passes_its_self_check_on_cuda(
    dtype: torch.dtype, head_dim: int, triton_attention: ModuleType, device: torch.device
) -> None:
    """What "auto" decides on this GPU: the compiled kernel agrees with the PyTorch path (no fallback), for
    SA-GNN's head width (4) and wider ones, on every tile size (crystals of 1-16, 17-32 and 33-200 atoms)."""
    checked_triton_attention.cache_clear()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", KernelFallbackWarning)
            for lengths in ([1, 5, 16, 3], [17, 32, 2], [1, 40, 200, 7, 64]):
                q, k, v, do, cu, max_seqlen = batch(device, 0, lengths, dtype, heads=8, head_dim=head_dim)
                out = varlen_attention(q, k, v, cu, max_seqlen, backend="auto")
                assert checked_triton_attention().uses_kernel(q, max_seqlen) is True, (
                    checked_triton_attention().failures
                )
                want = varlen_attention_reference(q.float(), k.float(), v.float(), cu)
                torch.testing.assert_close(
                    out.float(), want, rtol=0, atol=5 * tolerance(dtype) * float(want.abs().max())
                )
    finally:
        checked_triton_attention.cache_clear()
