"""Element features for element nodes: a packaged element table (matminer's data) or a learned embedding."""

from __future__ import annotations

from functools import cache
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from sagnn_lightning.errors import UsageError, param

ElementSource = Literal["matscholar", "megnet", "learned"]

#: largest atomic number with a feature row (matscholar covers H..Lr)
MAX_ATOMIC_NUMBER = 103


@cache
def element_table(source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(features [104, F] float32, known [104] bool)`` of a packaged element table, row = atomic number.

    * ``"matscholar"``: 200-d word embeddings of the elements learned from 3 million materials-science abstracts
      (Tshitoyan et al., Nature 571, 95, 2019), as shipped by matminer (``MatscholarElementData``); CrabNet's
      and Roost's default element representation (mat2vec). Covers H–Lr.
    * ``"megnet"``: 16-d element embeddings that MEGNet learned on Materials Project formation energies (Chen et
      al., Chem. Mater. 31, 3564, 2019), as shipped by matminer (``MEGNetElementData``). Covers H–Pu.

    Elements without data are left out (``known`` False) rather than imputed.
    """
    from matminer.utils.data import MatscholarElementData, MEGNetElementData
    from pymatgen.core import Element

    data = {"matscholar": MatscholarElementData, "megnet": MEGNetElementData}[source](impute_nan=False)
    names = list(data.prop_names)
    table = np.zeros((MAX_ATOMIC_NUMBER + 1, len(names)), dtype=np.float32)
    known = np.zeros(MAX_ATOMIC_NUMBER + 1, dtype=bool)
    for z in range(1, MAX_ATOMIC_NUMBER + 1):
        symbol = Element.from_Z(z).symbol
        if symbol in data.all_element_data:
            table[z] = [data.get_elemental_property(symbol, p) for p in names]
            known[z] = True
    return table, known


class ElementFeatures(nn.Module):
    """Atomic number → feature vector: a fixed packaged table, or a learned embedding.

    Args:
        source: ``"matscholar"`` (200-d, default), ``"megnet"`` (16-d) or ``"learned"`` (``nn.Embedding``).
        learned_dim: width of the learned embedding (``source="learned"``).

    The packaged tables are non-persistent buffers (rebuilt from matminer's data, not stored in checkpoints).
    An element the table does not cover raises a ``ValueError`` naming it and the option to change.

    Shapes:
        ``atomic_numbers [N]`` (long) → ``[N, out_channels]``.
    """

    known: Tensor
    table: Tensor

    def __init__(self, source: ElementSource = "matscholar", learned_dim: int = 64) -> None:
        super().__init__()
        if source not in ("matscholar", "megnet", "learned"):
            raise UsageError(
                f"element_features must be 'matscholar', 'megnet' or 'learned' ({param('model.model.element_features')}), "
                f"got {source!r}"
            )
        self.source = source
        if source == "learned":
            self.embedding: nn.Embedding | None = nn.Embedding(MAX_ATOMIC_NUMBER + 1, learned_dim)
            known = np.ones(MAX_ATOMIC_NUMBER + 1, dtype=bool)
            known[0] = False
            self.out_channels = learned_dim
            self.register_buffer("table", torch.zeros(0), persistent=False)
        else:
            self.embedding = None
            table, known = element_table(source)
            self.out_channels = table.shape[1]
            self.register_buffer("table", torch.from_numpy(table.copy()), persistent=False)
        self.register_buffer("known", torch.from_numpy(known.copy()), persistent=False)

    def reset_parameters(self) -> None:
        if self.embedding is not None:
            self.embedding.reset_parameters()

    def check(self, atomic_numbers: Tensor) -> None:
        """Raise ``ValueError`` naming the elements that have no features in the table. Reads a copy on the host:
        called by :meth:`forward` for CPU tensors (numpy, no dispatched op) and, for training on a GPU, once per
        dataset by the LightningModule at set-up, so that training never waits for a device-to-host read."""
        z = atomic_numbers.detach().cpu().numpy()
        known = self.known.detach().cpu().numpy()
        bad = (z > MAX_ATOMIC_NUMBER) | (z < 0)
        bad[~bad] = ~known[z[~bad]]
        if bad.any():
            from pymatgen.core import Element

            missing = sorted({int(v) for v in z[bad]})
            names = ", ".join(f"{Element.from_Z(v).symbol} (Z={v})" if 0 < v <= 118 else f"Z={v}" for v in missing)
            raise UsageError(
                f"ElementFeatures: no {self.source} features for {names}; use "
                f"{param('model.model.element_features')}=learned or leave these compositions out"
            )

    def forward(self, atomic_numbers: Tensor) -> Tensor:
        z = atomic_numbers.clamp(0, MAX_ATOMIC_NUMBER)
        if atomic_numbers.device.type == "cpu" and not torch.compiler.is_compiling():
            self.check(atomic_numbers)
        if self.embedding is not None:
            return self.embedding(z)
        return self.table[z]

    def extra_repr(self) -> str:
        return f"source={self.source!r}, out_channels={self.out_channels}"
