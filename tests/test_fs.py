import pytest

from pipeline import fs


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_roundtrip_and_listing(where, tmp_path, request):
    root = str(tmp_path) if where == "local" else request.getfixturevalue("gcs_bucket")
    url = fs.join(root, "a", "b.json")
    fs.write_json(url, {"x": 1})
    assert fs.read_json(url) == {"x": 1}
    assert fs.exists(url)
    fs.write_bytes(fs.join(root, "a", "c.bin"), b"\x00" * 300_000)
    names = [fs.basename(u) for u in fs.listdir(fs.join(root, "a"))]
    assert names == ["b.json", "c.bin"]
    assert len(fs.read_bytes(fs.join(root, "a", "c.bin"))) == 300_000
    fs.remove(fs.join(root, "a"), recursive=True)
    assert not fs.exists(url)


def test_local_write_leaves_no_temp_files(tmp_path):
    fs.write_text(str(tmp_path / "f.txt"), "hello")
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


# -- retry ------------------------------------------------------------------------------------------
def _flaky(errors: list[BaseException], value="ok"):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if errors:
            raise errors.pop(0)
        return value

    return fn, calls


def test_retry_recovers_from_transient_errors(caplog):
    fn, calls = _flaky([ConnectionRefusedError("refused"), ConnectionResetError("reset")])
    sleeps: list[float] = []
    with caplog.at_level("WARNING", logger="pipeline.fs"):
        assert fs.retry(fn, "gs://b/x", what="read", sleep=sleeps.append,
                        policy=fs.RetryPolicy(attempts=5, max_s=60, base_s=0.5)) == "ok"
    assert calls["n"] == 3
    assert 0.25 <= sleeps[0] < 0.75 and 0.5 <= sleeps[1] < 1.5  # exponential backoff with jitter
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "gs://b/x" in warnings[0] and "attempt 1 of 5" in warnings[0]


@pytest.mark.parametrize("error", [FileNotFoundError("gone"), PermissionError("no"), ValueError("bad")])
def test_retry_does_not_retry_permanent_errors(error):
    fn, calls = _flaky([error])
    with pytest.raises(type(error)):
        fs.retry(fn, "gs://b/x", sleep=lambda s: pytest.fail("slept"))
    assert calls["n"] == 1


def test_retry_budget_exhaustion_is_one_clear_line():
    fn, calls = _flaky([TimeoutError("timed out")] * 10)
    with pytest.raises(fs.StorageUnavailable) as info:
        fs.retry(fn, "gs://b/ckpt/f.bin", what="write", sleep=lambda s: None,
                 policy=fs.RetryPolicy(attempts=3, max_s=60, base_s=0.01))
    msg = str(info.value)
    assert calls["n"] == 3 and "\n" not in msg
    assert "gs://b/ckpt/f.bin" in msg and "after 3 attempts" in msg and "TimeoutError" in msg
    assert isinstance(info.value, fs.UserError)


def test_retry_budget_in_seconds(monkeypatch):
    monkeypatch.setenv("VLA_STORAGE_RETRY_MAX_S", "0")
    fn, calls = _flaky([ConnectionError("down")] * 3)
    with pytest.raises(fs.StorageUnavailable, match="after 1 attempt "):
        fs.retry(fn, "gs://b/x", sleep=lambda s: None)
    assert calls["n"] == 1


def test_transient_classification():
    class HttpError(Exception):
        def __init__(self, code):
            super().__init__(f"http {code}")
            self.code = code

    assert fs.is_transient(HttpError(503)) and fs.is_transient(HttpError(429))
    assert not fs.is_transient(HttpError(404)) and not fs.is_transient(HttpError(403))
    assert fs.is_transient(OSError(104, "Connection reset by peer"))
    assert not fs.is_transient(OSError("Forbidden: gs://b/x"))


def test_bad_retry_env_is_a_user_error(monkeypatch):
    monkeypatch.setenv("VLA_STORAGE_RETRIES", "many")
    with pytest.raises(fs.UserError, match="VLA_STORAGE_RETRIES"):
        fs.retry_policy()



def test_retrying_reader_resumes_at_the_offset(monkeypatch):
    """A connection reset mid-file: the reader re-opens at its offset; no record lost or repeated."""
    import io

    from pipeline.data.io.tfrecord import frame_record, read_records

    records = [bytes([i]) * (50 + i) for i in range(6)]
    blob = b"".join(frame_record(r) for r in records)
    opens = {"n": 0}

    class FlakyFile(io.BytesIO):
        def read(self, n=-1):
            if opens["n"] == 1 and self.tell() > 100:  # the first connection dies after 100 bytes
                raise ConnectionResetError("reset by peer")
            return super().read(n)

    class FakeFS:
        def open(self, path, mode):
            opens["n"] += 1
            return FlakyFile(blob)

    monkeypatch.setattr(fs, "get_fs", lambda url: (FakeFS(), url.split("://", 1)[1]))
    monkeypatch.setenv("VLA_STORAGE_RETRY_BASE_S", "0")
    assert list(read_records("gs://b/shard.tfrecord")) == records
    assert opens["n"] == 2


def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_copy_dir_round_trip(where, tmp_path, request):
    src = tmp_path / "src"
    (src / "ranks").mkdir(parents=True)
    files = {"a.bin": bytes(range(256)) + b"\r", "ranks/rank_0.json": b'{"x": 1}\n', "empty": b""}
    for name, data in files.items():
        (src / name).write_bytes(data)
    mid = (request.getfixturevalue("gcs_bucket") + "/copy") if where == "gcs" else str(tmp_path / "mid")
    assert fs.copy_dir(str(src), mid) == 3
    assert fs.copy_dir(mid, str(tmp_path / "back")) == 3
    assert _tree(tmp_path / "back") == files
    assert not [p for p in (tmp_path / "back").rglob("*.tmp-*")]  # written under temp names, renamed


def test_copy_dir_of_a_missing_dir_fails(tmp_path):
    with pytest.raises(FileNotFoundError):
        fs.copy_dir(str(tmp_path / "nope"), str(tmp_path / "out"))
    assert fs.copy_dir(str(tmp_path), str(tmp_path.parent / f"{tmp_path.name}-empty-copy")) == 0
    assert (tmp_path.parent / f"{tmp_path.name}-empty-copy").is_dir()


def test_copy_file_retries_a_transient_error(tmp_path, monkeypatch):
    src = tmp_path / "w.bin"
    src.write_bytes(b"weights")
    monkeypatch.setenv("VLA_STORAGE_RETRY_BASE_S", "0")
    local_fs, _ = fs.get_fs(str(src))
    real, calls = type(local_fs).get_file, []

    def flaky(self, rpath, lpath, **kw):
        calls.append(rpath)
        if len(calls) == 1:
            raise ConnectionResetError("reset by peer")
        return real(self, rpath, lpath, **kw)

    monkeypatch.setattr(type(local_fs), "get_file", flaky)
    fs.copy_file(str(src), str(tmp_path / "out" / "w.bin"))
    assert len(calls) == 2 and (tmp_path / "out" / "w.bin").read_bytes() == b"weights"
