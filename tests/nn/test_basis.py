"""Gaussian bond-length expansion vs its closed form (MEGNet's 100 centres on 0–5 Å, width 0.5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sagnn_lightning.nn.basis import GaussianExpansion


def test_megnet_defaults_match_closed_form():
    basis = GaussianExpansion()
    d = np.array([0.0, 0.7, 2.345, 5.0, 6.1])
    expected = np.exp(-((d[:, None] - np.linspace(0.0, 5.0, 100)[None, :]) ** 2) / 0.5**2)
    out = basis(torch.tensor(d))
    assert out.shape == (5, 100) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
    # the end centres sit on the range ends (torch.linspace: to rounding, not promised bit for bit)
    ends = torch.tensor([0.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(basis.centers()[[0, -1]], ends, rtol=0, atol=1e-12)
    # the peak sits on the nearest centre
    assert int(out[2].argmax()) == int(np.abs(np.linspace(0, 5, 100) - 2.345).argmin())


def test_custom_range_and_dtype():
    basis = GaussianExpansion(1.0, 3.0, 5, 0.25)
    torch.testing.assert_close(basis.centers(), torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0], dtype=torch.float64))
    assert basis(torch.tensor([1.5], dtype=torch.float32)).dtype == torch.float32
    assert "num_gaussians=5" in repr(basis)
    assert len(basis.state_dict()) == 0  # centres are derived from the arguments, not saved


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_gaussians": 0}, "num_gaussians"), ({"width": 0.0}, "width"), ({"start": 2.0, "stop": 1.0}, "stop")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianExpansion(**kwargs)
