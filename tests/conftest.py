"""Shared test fixtures: a real local GCS emulator for gs:// tests."""

from __future__ import annotations

import os
import uuid

import pytest

import pipeline  # noqa: F401  (sets env defaults before gcsfs is imported)
from tests.support.gcs_emulator import BUCKET, GcsEmulator


@pytest.fixture(scope="session")
def gcs_emulator():
    emu = GcsEmulator()
    emu.start()
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = emu.host
    yield emu
    if old is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = old
    emu.close()


@pytest.fixture()
def gcs_bucket(gcs_emulator) -> str:
    """A fresh ``gs://test-bucket/<unique prefix>`` URL backed by the local emulator."""
    return f"gs://{BUCKET}/t-{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def one_torch_thread():
    """One intra-op torch thread: the CI box has 2 shared cores and oversubscription stalls."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
