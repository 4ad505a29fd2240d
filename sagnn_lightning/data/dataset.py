"""Memory-mapped dataset of cached crystal graphs (the reader side of the graph cache).

The file layout is described in :mod:`sagnn_lightning.data.cache_format`.
Reading memory-maps the file (``mmap`` + ``np.frombuffer`` views), so nothing proportional to the
number of graphs is loaded: only the pages an item touches are read, and the dataset periodically
unmaps the pages it has read (``madvise(MADV_DONTNEED)``, they stay in the OS page cache) so the
resident set stays flat even while iterating a cache larger than memory.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from sagnn_lightning.data.cache_format import (
    CACHE_FORMAT_VERSION,
    FOOTER,
    CacheError,
    SkippedItem,
    read_header,
    verify_arrays,
)
from sagnn_lightning.data.composition import CompositionSettings
from sagnn_lightning.data.inputs import settings_from_dict

__all__ = ["CACHE_FORMAT_VERSION", "CacheError", "GraphDataset", "SkippedItem"]


class GraphDataset(Dataset):
    """Crystal graphs read lazily from a graph cache file.

    Args:
        path: cache file written by :func:`sagnn_lightning.data.cache.load_or_build_graphs`.
        verify: recompute every array's crc32 when opening (one streamed pass over the file).
        release_every: call :meth:`release_pages` after this many items (0 = never).

    ``dataset[i]`` is a ``Data`` with ``atomic_numbers [N] long``, ``pos [N, 3] float64`` (Å),
    ``lattice [1, 3, 3] float64`` (Å), ``edge_index [2, E] long``, ``image_offsets [E, 3] long``,
    ``state [1, S] float32``, ``y [1, T] float32`` and ``sample_id`` (str). A composition cache
    (``settings`` is a ``CompositionSettings``) gives ``atomic_numbers [N]``, ``fractions [N] float64``,
    ``edge_index [2, N²]``, ``state``, ``y`` and ``sample_id`` instead (no geometry).
    Attributes: ``path``, ``settings``, ``skipped``, ``fingerprint``; properties ``sample_ids``,
    ``targets [n, T]``, ``num_atoms [n]``, ``num_edges [n]`` (computed on access, O(n)).
    Picklable (DataLoader workers reopen the map; nothing is copied).
    """

    def __init__(self, path: str | Path, *, verify: bool = True, release_every: int = 4096) -> None:
        self.path = Path(path)
        self.release_every = int(release_every)
        self._reads = 0
        self._mmap: mmap.mmap | None = None
        self.header = read_header(self.path)
        if verify:
            verify_arrays(self.path, self.header)
        self.settings = settings_from_dict(self.header["settings"])
        self.fingerprint: str = self.header["fingerprint"]
        self.skipped = [SkippedItem(str(s), str(r)) for s, r in self.header["skipped"]]
        self._state = torch.tensor([self.settings.state], dtype=torch.float32)
        self._elements: np.ndarray | None = None
        self._arrays: dict[str, np.ndarray] | None = None

    # -- storage -----------------------------------------------------------------------------
    def _map(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            with open(self.path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            # the file may have been rebuilt since the header was read: same footer hash or refuse
            if len(mm) != self.header["file_size"] or mm[-FOOTER.size :][8:40].hex() != self.header["_sha256"]:
                mm.close()
                raise CacheError(f"{self.path}: the cache file changed since it was opened; open it again")
            self._mmap = mm
            arrays = {}
            for name, meta in self.header["arrays"].items():
                shape, dtype = tuple(meta["shape"]), np.dtype(meta["dtype"])
                count = int(np.prod(shape, dtype=np.int64))
                arrays[name] = np.frombuffer(self._mmap, dtype=dtype, count=count, offset=meta["offset"]).reshape(shape)
            self._arrays = arrays
        return self._arrays

    def release_pages(self) -> None:
        """Drop this process's mapping of the pages read so far (they stay in the OS page cache).

        Called every ``release_every`` items so the resident set stays flat while iterating a
        cache larger than memory; arrays returned by ``__getitem__`` are copies and stay valid.
        """
        if self._mmap is not None and hasattr(self._mmap, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._mmap.madvise(mmap.MADV_DONTNEED)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None
        state["_mmap"] = None
        return state

    # -- Dataset -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.header["num_graphs"])

    def __getitem__(self, index: int) -> Data:
        n = len(self)
        index = int(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"graph index {index} out of range for a dataset of {n} graphs")
        a = self._map()
        self._reads += 1
        if self.release_every and self._reads % self.release_every == 0:
            self.release_pages()
        a0, a1 = (int(x) for x in a["atom_ptr"][index : index + 2])
        e0, e1 = (int(x) for x in a["edge_ptr"][index : index + 2])
        fields = {
            "atomic_numbers": torch.from_numpy(a["atomic_numbers"][a0:a1].astype(np.int64)),
            "edge_index": torch.from_numpy(a["edge_index"][e0:e1].astype(np.int64).T.copy()),
            "state": self._state.clone(),
            "y": torch.from_numpy(a["targets"][index].astype(np.float32)).reshape(1, -1),
            "sample_id": bytes(a["sample_ids"][index]).decode("utf-8"),
            "num_nodes": a1 - a0,
        }
        if isinstance(self.settings, CompositionSettings):  # element graphs: fractions instead of geometry
            fields["fractions"] = torch.from_numpy(np.array(a["fractions"][a0:a1]))
        else:
            fields["pos"] = torch.from_numpy(np.array(a["pos"][a0:a1]))
            fields["lattice"] = torch.from_numpy(np.array(a["lattice"][index])).reshape(1, 3, 3)
            fields["image_offsets"] = torch.from_numpy(a["image_offsets"][e0:e1].astype(np.int64))
            fields["cutoff"] = float(self.settings.cutoff)
        return Data(**fields)

    # -- metadata ----------------------------------------------------------------------------
    def elements(self) -> np.ndarray:
        """The distinct atomic numbers of all graphs (sorted), read from the cache file once."""
        if self._elements is None:
            self._elements = np.unique(np.asarray(self._map()["atomic_numbers"]))
        return self._elements

    @property
    def sample_ids(self) -> list[str]:
        """Ids of the graphs, in dataset order (skipped items excluded)."""
        return [bytes(s).decode("utf-8") for s in self._map()["sample_ids"]]

    @property
    def targets(self) -> np.ndarray:
        """``[n, T]`` float64 targets (read-only map)."""
        return self._map()["targets"]

    @property
    def num_atoms(self) -> np.ndarray:
        """``[n]`` int64 atoms per graph."""
        return np.diff(self._map()["atom_ptr"])

    @property
    def num_edges(self) -> np.ndarray:
        """``[n]`` int64 edges per graph."""
        return np.diff(self._map()["edge_ptr"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} graphs, {int(self.header['num_targets'])} targets, "
            f"{self.settings}, skipped={len(self.skipped)}, path='{self.path}')"
        )
