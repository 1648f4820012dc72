"""Unit tests of pipeline.secrets: what is masked, and that other text is left alone."""

from __future__ import annotations

import json
import logging

import pytest

from pipeline.secrets import MASK, RedactingFilter, redact, secret_values

TOKEN = "ya29.FAKEa0b1c2d3e4f5g6h7i8j9"


@pytest.mark.parametrize("text", [
    "plain text, nothing secret: gs://bucket/a:b http://127.0.0.1:4443/x step_000002",
    "pad_token_id=0 tokenizer: demo bos_token: <|begin_of_text|> max_tokens: 12345678",
    "RAY_AUTH_MODE=disabled kuberay.gcs_secret: gcs-sa-key sha256: " + "ab" * 32,
    "",
])
def test_non_secret_text_is_unchanged(text):
    assert redact(text) is text


@pytest.mark.parametrize("text, kept", [
    (f"token {TOKEN} end", "end"),
    (f"gs://user:{TOKEN}@bucket/path", "gs://user:[REDACTED]@bucket/path"),
    ("https://bob:hunter2hunter2@example.com/x", "https://bob:[REDACTED]@example.com/x"),
    ("Authorization: Bearer abcdefghijklmnop1234", "Authorization: Bearer [REDACTED]"),
    ("hf hf_abcdefghijklmnopqrstuvwxyz123456", "hf [REDACTED]"),
    ("api_key=abcdef1234567890abcd next", "api_key=[REDACTED] next"),
    ('{"client_secret": "abc123def456ghi789"}', '{"client_secret": "[REDACTED]"}'),
])
def test_token_shapes_are_masked(text, kept):
    out = redact(text)
    assert kept in out and MASK in out
    assert "abcdefghijklmnop1234" not in out and "FAKEa0b1" not in out and "hunter2" not in out


def test_private_key_json_and_pem():
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvgIBADANBg\n-----END PRIVATE KEY-----\n"
    assert "MIIEvgIBADANBg" not in redact(pem)
    assert "MIIEvgIBADANBg" not in redact(json.dumps({"private_key": pem, "x": 1}))
    assert '"x": 1' in redact(json.dumps({"private_key": pem, "x": 1}))


def test_secret_named_env_values_are_masked(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "correct-horse-9")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "falsefalse")  # not a secret name
    monkeypatch.setenv("HOME_KEY", str(tmp_path))  # an existing path is not a secret value
    creds = tmp_path / "sa.json"
    creds.write_text(json.dumps({"private_key_id": "kid-0123456789", "client_email": "a@b.c"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(creds))
    values = secret_values()
    assert "correct-horse-9" in values and "kid-0123456789" in values
    assert "falsefalse" not in values and str(tmp_path) not in values and str(creds) not in values
    out = redact("key 0123456789abcdef0123456789abcdef01234567 pw correct-horse-9 kid kid-0123456789 falsefalse")
    assert out == f"key {MASK} pw {MASK} kid {MASK} falsefalse"
    assert redact(f"path {tmp_path}") == f"path {tmp_path}"


def test_logging_filter_masks_message_args_and_traceback():
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "url %s failed", (f"gs://u:{TOKEN}@b/c",), None)
    try:
        raise RuntimeError(f"boom {TOKEN}")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    assert TOKEN not in record.getMessage() and MASK in record.getMessage()
    assert TOKEN not in (record.exc_text or "") and "boom" in record.exc_text


def test_to_yaml_masks_credentials_in_config_values():
    from dataclasses import dataclass

    from pipeline.config import to_yaml

    @dataclass
    class Cfg:
        data_root: str = f"gs://svc:{TOKEN}@bucket/curated"
        run_dir: str = "runs/train"

    text = to_yaml(Cfg())
    assert TOKEN not in text and "gs://svc:[REDACTED]@bucket/curated" in text and "runs/train" in text
    assert TOKEN in to_yaml(Cfg(), redact=False)


def test_install_redacts_records_of_any_logger_and_uncaught_tracebacks(capsys):
    import sys

    from pipeline.secrets import install

    old_factory, old_hook = logging.getLogRecordFactory(), sys.excepthook
    try:
        install()
        install()  # idempotent
        record = logging.getLogger("some.library").makeRecord("some.library", logging.ERROR, __file__, 1,
                                                               "auth with %s", (TOKEN,), None)
        assert TOKEN not in record.getMessage()
        try:
            raise RuntimeError(f"failed for gs://u:{TOKEN}@b/x")
        except RuntimeError:
            sys.excepthook(*sys.exc_info())
        err = capsys.readouterr().err
        assert "RuntimeError" in err and TOKEN not in err and "gs://u:[REDACTED]@b/x" in err
    finally:
        logging.setLogRecordFactory(old_factory)
        sys.excepthook = old_hook
