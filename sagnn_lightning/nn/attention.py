"""Multi-head self-attention over the atoms of each crystal in a packed batch (SA-GNN's MHSA)."""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
from torch import Tensor, nn

from sagnn_lightning.kernels import varlen_attention
from sagnn_lightning.kernels.dispatch import Backend, resolve_backend
from sagnn_lightning.kernels.reference import varlen_attention_weights
from sagnn_lightning.nn.fused_attention import FusedSelfAttention, PaddedLayout, cpu_attention_kernel_available
from sagnn_lightning.nn.parameter_views import ParameterViews, transposed

#: attention maps of a model: ``{layer name: [weights of crystal b, [heads, n_b, n_b]] for b in the batch}``
AttentionMaps = dict[str, list[Tensor]]


class AtomSelfAttention(nn.Module):
    r"""Every atom attends to every atom of its own crystal (never across crystals).

    .. math::
        \mathrm{head}_h = \mathrm{softmax}\!\left(Q_h K_h^\top / \sqrt{d_h}\right) V_h, \qquad
        x' = \mathrm{LayerNorm}\bigl(x + W_O [\mathrm{head}_1 \Vert \dots \Vert \mathrm{head}_H]\bigr)

    with the softmax taken over the atoms of each crystal only (Vaswani et al. 2017, post-norm
    residual; Cui et al., AIP Advances 14, 2024 use it on MEGNet's atom features). With ``norm_first=True``
    the LayerNorm moves onto the attention's input (pre-norm, Xiong et al. 2020):
    :math:`x' = x + W_O[\dots](\mathrm{LayerNorm}(x))`, so ``x`` passes through unchanged beside the attention
    (its scale reaches the readout) and a layer whose output projection is near zero leaves ``x`` as it was.
    The packed batch is
    handed to :func:`sagnn_lightning.kernels.varlen_attention` as ``(total, heads, head_dim)`` with
    ``cu_seqlens = ptr`` (int32) and ``max_seqlen = max_num_atoms``.

    Args:
        dim: atom feature width (MEGNet blocks: 32).
        heads: number of heads ``H`` (SA-GNN default 8).
        dropout: dropout on the attention weights, training only (default 0).
        backend: ``"auto"``, ``"torch"`` (padded SDPA with key mask) or ``"triton"`` (varlen kernel).
            ``"auto"`` uses the Triton kernel on CUDA once it has passed a one-time self-check against the
            PyTorch path on this device and dtype (else, with one ``KernelFallbackWarning``, the PyTorch path;
            see :func:`sagnn_lightning.kernels.varlen_attention`), and the PyTorch path for float64 inputs.
        head_dim: width per head; default ``dim // heads`` (then ``heads`` must divide ``dim``, and the
            parameter count does not depend on ``heads``).
        residual: add the input back (default True).
        layer_norm: LayerNorm after the residual sum (default True), or on the input with ``norm_first``.
        norm_first: pre-norm (LayerNorm on the attention's input, none after the sum) instead of post-norm
            (default False, as in :class:`torch.nn.TransformerEncoderLayer`); needs ``residual``.

    Shapes:
        ``x [N, dim]`` (atoms of all crystals, packed), ``ptr [B + 1]`` (graph boundaries), ``max_num_atoms``
        (Python int, largest crystal), optional ``key_bias [N]`` and ``batch [N]`` (the crystal of each atom, when
        the caller has it: saves recomputing it from ``ptr``) → ``[N, dim]``; with ``return_weights=True``
        → ``([N, dim], weights [B, heads, max_num_atoms, max_num_atoms])``.

    ``return_weights=True`` computes the same formula on a plain-PyTorch path with an explicit softmax
    (:func:`~sagnn_lightning.kernels.reference.varlen_attention_weights`, whatever ``backend`` says) and also returns
    the weights: ``weights[b, h, i, j]`` is how much atom ``i`` (query) of crystal ``b`` takes from atom ``j`` (key),
    positions within the crystal, each query's row summing to 1 (padding rows and columns are 0;
    :func:`split_by_crystal` cuts them off). For inspection: it costs the padded ``B × heads × L²`` weights in memory.

    ``key_bias`` is added to every query's score for that key before the softmax (shared by the heads): with
    ``key_bias = log w`` the attention weights become ``w_j exp(s_ij) / Σ_k w_k exp(s_ik)``, i.e. each node
    is attended to in proportion to its weight ``w`` (an element's fraction of its formula in
    :class:`~sagnn_lightning.models.CompositionSAGNN`). Both backends and their gradients take it.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dropout: float = 0.0,
        backend: Backend = "auto",
        head_dim: int | None = None,
        residual: bool = True,
        layer_norm: bool = True,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        if norm_first and not residual:
            raise ValueError("AtomSelfAttention: norm_first=True needs residual=True (pre-norm adds the input back)")
        if heads < 1:
            raise ValueError(f"AtomSelfAttention: heads must be >= 1, got {heads}")
        if head_dim is None:
            if dim % heads != 0:
                raise ValueError(
                    f"AtomSelfAttention: dim={dim} is not divisible by heads={heads}; "
                    f"pick heads dividing {dim} or pass head_dim explicitly"
                )
            head_dim = dim // heads
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"unknown attention backend {backend!r}; choose 'auto', 'torch' or 'triton'")
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        self.dropout, self.backend, self.residual, self.norm_first = float(dropout), backend, residual, norm_first
        inner = heads * head_dim
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)
        self.norm: nn.Module = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self._weights_t = ParameterViews()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        if isinstance(self.norm, nn.LayerNorm):
            self.norm.reset_parameters()

    @overload
    def forward(
        self,
        x: Tensor,
        ptr: Tensor,
        max_num_atoms: int,
        key_bias: Tensor | None = None,
        return_weights: Literal[False] = False,
        batch: Tensor | None = None,
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        x: Tensor,
        ptr: Tensor,
        max_num_atoms: int,
        key_bias: Tensor | None = None,
        *,
        return_weights: Literal[True],
        batch: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]: ...

    def forward(
        self,
        x: Tensor,
        ptr: Tensor,
        max_num_atoms: int,
        key_bias: Tensor | None = None,
        return_weights: bool = False,
        batch: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        total = x.shape[0]
        scale = 1.0 / math.sqrt(self.head_dim)
        dropout_p = self.dropout if self.training else 0.0
        h = self.norm(x) if self.norm_first else x  # the attention's input
        if not return_weights and self._fusable(x, key_bias, dropout_p):
            layout = PaddedLayout.of(ptr, total, int(max_num_atoms), x.dtype, batch)
            projections = (self.q_proj, self.k_proj, self.v_proj, self.out_proj)
            weights_t = tuple(self._weights_t.get(str(n), p.weight, transposed) for n, p in enumerate(projections))
            params = [t for p in projections for t in (p.weight, p.bias)]
            out = FusedSelfAttention.apply(h, layout, self.heads, scale, weights_t, *params)
            return self._combine(x, out)
        shape = (total, self.heads, self.head_dim)
        q, k, v = self.q_proj(h).view(shape), self.k_proj(h).view(shape), self.v_proj(h).view(shape)
        weights: Tensor | None = None
        if return_weights:  # explicit softmax, weights kept (for inspection)
            out, weights = varlen_attention_weights(
                q, k, v, ptr, int(max_num_atoms), dropout_p=dropout_p, scale=scale, key_bias=key_bias
            )
        else:
            out = varlen_attention(
                q,
                k,
                v,
                cu_seqlens=ptr.to(torch.int32),
                max_seqlen=int(max_num_atoms),
                dropout_p=dropout_p,
                scale=scale,
                backend=self.backend,
                validate=False,  # ptr / max_num_atoms come from collate_graphs: no GPU read-back
                key_bias=key_bias,
            )
        out = self._combine(x, self.out_proj(out.reshape(total, self.heads * self.head_dim)))
        return out if weights is None else (out, weights)

    def _combine(self, x: Tensor, attended: Tensor) -> Tensor:
        """The residual sum and, post-norm, its LayerNorm."""
        out = x + attended if self.residual else attended
        return out if self.norm_first else self.norm(out)

    def _fusable(self, x: Tensor, key_bias: Tensor | None, dropout_p: float) -> bool:
        """Eager CPU training on the PyTorch path without dropout or key bias: :class:`FusedSelfAttention` runs it."""
        return (
            x.device.type == "cpu"
            and x.dim() == 2
            and key_bias is None
            and dropout_p == 0.0
            and resolve_backend(self.backend, "cpu") == "torch"
            and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled("cpu")
            and all(p.dtype == x.dtype for p in self.parameters())
            and cpu_attention_kernel_available()
        )

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, head_dim={self.head_dim}, dropout={self.dropout}, "
            f"backend={self.backend!r}, norm_first={self.norm_first}"
        )


def split_by_crystal(weights: Tensor, ptr: Tensor) -> list[Tensor]:
    """Padded weights ``[B, heads, L, L]`` (from ``AtomSelfAttention(..., return_weights=True)``) → one
    ``[heads, n_b, n_b]`` view per crystal (``n_b = ptr[b+1] - ptr[b]``; reads ``ptr`` back to the host once)."""
    sizes = (ptr[1:] - ptr[:-1]).tolist()
    return [weights[b, :, :n, :n] for b, n in enumerate(sizes)]
