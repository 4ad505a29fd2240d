"""matbench data that is not on disk: matminer's public metadata, the download, and one clear error offline.

No test touches the network: the HTTP call is replaced inside the test process only (``requests.get``), so a
user can never get a fake download.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import requests

import sagnn_lightning.data.matbench as mb
from sagnn_lightning.data.matbench import (
    MATBENCH_TASKS,
    DatasetUnavailableError,
    MatbenchDataModule,
    download_matbench_file,
    matminer_data_home,
)
from sagnn_lightning.errors import SAGNNError, lightning_flag
from tests.data.matbench_files import write_matbench_file

ROOT = Path(__file__).resolve().parents[2]
INPUTS = ROOT / "tests/fixtures/inputs"
#: how the fixes read on the command line (the LightningCLI's flags) and from Python (the arguments' names)
FLAGS = ("--data.data_file=", "--data.data_home=", "$MATMINER_DATA=")
PYTHON_NAMES = ("data_file=", "data_home=", "$MATMINER_DATA=")


class FakeResponse:
    """What ``requests.get(url, stream=True)`` returns, serving ``payload``."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.headers = {"content-length": str(len(payload))}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def raise_for_status(self) -> None:
        return None

    def iter_content(self, chunk_size: int):
        for k in range(0, len(self.payload), chunk_size):
            yield self.payload[k : k + chunk_size]


def _assert_one_clear_message(err: BaseException, task: str, path: Path) -> str:
    message = err.render(lightning_flag) if isinstance(err, SAGNNError) else str(err)
    assert isinstance(err, SAGNNError) and isinstance(err, FileNotFoundError)
    assert task in message and str(path) in message, message
    assert all(flag in message for flag in FLAGS), message
    assert all(name in str(err) for name in PYTHON_NAMES) and "--data." not in str(err), str(err)
    assert "<data_home>" not in message and "\n" not in message
    return message


# --------------------------------------------------------------------------------------------- matminer's API
def test_matminer_public_metadata_holds_on_the_installed_version() -> None:
    """What the download relies on: matminer.datasets.get_dataset_attribute (public) for every structure task."""
    from matminer.datasets import get_available_datasets, get_dataset_attribute

    available = set(get_available_datasets(print_format=None))
    for task in MATBENCH_TASKS:
        assert task in available
        assert get_dataset_attribute(task, "file_type") == "json.gz"
        assert get_dataset_attribute(task, "url").startswith("https://")
        digest = get_dataset_attribute(task, "hash")
        assert len(digest) == 64 and int(digest, 16) >= 0  # a sha256 hex digest


def test_matminer_finds_datasets_where_we_look(tmp_path, monkeypatch) -> None:
    """``$MATMINER_DATA/<task>.json.gz`` is where matminer's public ``load_dataset`` reads (and downloads) too."""
    from matminer.datasets import load_dataset

    monkeypatch.setenv("MATMINER_DATA", str(tmp_path))
    assert matminer_data_home() == tmp_path
    write_matbench_file(tmp_path / "matbench_jdft2d.json.gz")
    frame = load_dataset("matbench_jdft2d", download_if_missing=False)  # an existing file: no download
    assert len(frame) == 8 and list(frame.columns) == ["structure", "exfoliation_en"]
    monkeypatch.delenv("MATMINER_DATA")
    import matminer.datasets

    assert matminer_data_home() == Path(matminer.datasets.__file__).resolve().parent  # load_dataset's default


# --------------------------------------------------------------------------------------------- offline
def test_download_off_names_the_real_path_and_flags(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MATMINER_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetUnavailableError) as info:
        MatbenchDataModule("dielectric", download=False, cache_dir=str(tmp_path / "cache"))
    message = _assert_one_clear_message(
        info.value, "matbench_dielectric", tmp_path / "empty" / "matbench_dielectric.json.gz"
    )
    assert "--data.download=false" in message
    # without $MATMINER_DATA: matminer's own folder, as a real path
    monkeypatch.delenv("MATMINER_DATA")
    with pytest.raises(DatasetUnavailableError) as info:
        MatbenchDataModule("dielectric", download=False, cache_dir=str(tmp_path / "cache"))
    _assert_one_clear_message(info.value, "matbench_dielectric", matminer_data_home() / "matbench_dielectric.json.gz")


def test_failed_download_is_one_error_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("MATMINER_DATA", str(home))
    calls = []

    def offline(url, **kwargs):
        calls.append(url)
        raise requests.ConnectionError(f"Failed to resolve host for {url} (offline)")

    monkeypatch.setattr(requests, "get", offline)
    dm = MatbenchDataModule("jdft2d", cache_dir=str(tmp_path / "cache"), progress=False)  # nothing read yet
    with pytest.raises(DatasetUnavailableError) as info:
        _ = dm.target_mean  # the statistics the CLI links at instantiation need the data
    message = _assert_one_clear_message(info.value, "matbench_jdft2d", home / "matbench_jdft2d.json.gz")
    assert "ConnectionError" in message and calls[0] in message and "could not download" in message
    assert len(calls) == 1  # no retry loop
    assert [p.name for p in home.iterdir() if not p.name.endswith(".lock")] == []  # no partial file
    with pytest.raises(DatasetUnavailableError):
        dm.prepare_data()  # the same one error from prepare_data


def test_download_checks_sha256_and_renames_into_place(tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    payload = write_matbench_file(tmp_path / "served.json.gz")
    monkeypatch.setattr(requests, "get", lambda url, **kwargs: FakeResponse(payload))
    # matminer's pinned sha256 is the official file's, not this one's: refused, nothing left behind
    with pytest.raises(DatasetUnavailableError, match="sha256") as info:
        download_matbench_file("matbench_jdft2d", home, progress=False)
    _assert_one_clear_message(info.value, "matbench_jdft2d", home / "matbench_jdft2d.json.gz")
    assert [p.name for p in home.iterdir() if not p.name.endswith(".lock")] == []

    # with the served file's own sha256 pinned it is accepted, checked and renamed into place with 0644
    import matminer.datasets

    real = matminer.datasets.get_dataset_attribute
    pinned = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(
        matminer.datasets, "get_dataset_attribute", lambda task, key: pinned if key == "hash" else real(task, key)
    )
    old_umask = os.umask(0o022)
    try:
        path = download_matbench_file("matbench_jdft2d", home, progress=False)
    finally:
        os.umask(old_umask)
    assert path == home / "matbench_jdft2d.json.gz" and path.read_bytes() == payload
    assert (path.stat().st_mode & 0o777) == 0o644
    monkeypatch.setattr(requests, "get", lambda url, **kwargs: pytest.fail("an existing file is not downloaded"))
    assert download_matbench_file("matbench_jdft2d", home, progress=False) == path
    monkeypatch.setenv("MATMINER_DATA", str(home))
    table = MatbenchDataModule("jdft2d", cache_dir=str(tmp_path / "cache")).table  # read like any local file
    assert table.ids[0] == "mb-jdft2d-001" and len(table) == 8 and table.source == path


def test_module_uses_no_private_matminer_api() -> None:
    source = Path(mb.__file__).read_text()
    for private in ("_get_data_home", "_load_dataset_dict", "_validate_dataset", "matminer.datasets.utils"):
        assert private not in source
