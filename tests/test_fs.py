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
