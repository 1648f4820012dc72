"""Storage preflight (pipeline/storage.py): one-line UserErrors naming the key, before anything is written."""

from __future__ import annotations

import pytest

from pipeline import storage
from pipeline.errors import UserError
from tests.support.net import free_port


def test_unsupported_scheme():
    with pytest.raises(UserError, match=r"^data.data_root=nosuch://b/c: unsupported storage scheme 'nosuch://'"):
        storage.check_location("data.data_root", "nosuch://b/c")


def test_storage_host_that_does_not_answer(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UserError, match=r"^run_dir=gs://b/r: storage not reachable \(cannot connect to 127.0.0.1"):
        storage.check_location("run_dir", "gs://b/r")


def test_local_dir_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=r"is a file"):
        storage.check_location("run_dir", str(tmp_path / "f" / "run"), writable=True)
    storage.check_location("resume", str(tmp_path / "f" / "run"))  # only read: not checked for writing
    storage.check_location("run_dir", str(tmp_path / "new" / "run"), writable=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # nothing created


def test_reachable_bucket_and_probe(gcs_bucket, tmp_path):
    storage.check_reachable("checkpoint.dir", gcs_bucket)
    storage.check_location("checkpoint.dir", gcs_bucket, writable=True)
    for url in (gcs_bucket, str(tmp_path)):
        assert storage.probe_write(url, prefix=".t-probe-") >= 0.0
    assert list(tmp_path.iterdir()) == []  # the probe is deleted
    with pytest.raises(UserError, match="checkpoint.dir=gs://no-such-bucket-xyz/c: storage not reachable"):
        storage.check_reachable("checkpoint.dir", "gs://no-such-bucket-xyz/c")
