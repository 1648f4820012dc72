"""Action tokenizer: ids and decode values pinned to the facts file (Llama-2 base vocab 32000)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.model.tokenizer import ActionTokenizer


@pytest.mark.parametrize(
    ("value", "token_id"),
    [(1.0, 31744), (-1.0, 31999), (0.0, 31872), (5.0, 31744), (-7.0, 31999), (0.5, 31808),
     (-0.5, 31936), (0.999, 31745), (-0.999, 31999), (0.004, 31871), (-0.004, 31873)],
)
def test_llama2_ids_pinned(value, token_id):
    tok = ActionTokenizer()
    assert int(tok.encode(np.array([value]))[0]) == token_id
    assert int(tok.encode(torch.tensor([value]))[0]) == token_id


@pytest.mark.parametrize(
    ("token_id", "value"),
    [(31744, 0.996078431372549), (31745, 0.996078431372549), (31999, -0.996078431372549),
     (31998, -0.9882352941176471), (31872, 0.0), (31808, 0.5019607843137255)],
)
def test_decode_pinned(token_id, value):
    tok = ActionTokenizer()
    assert tok.decode(np.array([token_id]))[0] == pytest.approx(value, abs=1e-6)
    assert float(tok.decode(torch.tensor([token_id]))[0]) == pytest.approx(value, abs=1e-6)


def test_constants():
    tok = ActionTokenizer()
    assert tok.action_token_begin_idx == 31743
    assert (tok.first_id, tok.last_id) == (31744, 31999)
    assert tok.bin_edges.shape == (256,) and tok.bin_centers.shape == (255,)
    assert tok.bin_edges[1] - tok.bin_edges[0] == pytest.approx(2 / 255)


def test_vectorized_numpy_torch_agree_and_round_trip():
    tok = ActionTokenizer(base_vocab_size=768)
    x = np.random.default_rng(0).uniform(-1, 1, size=(64, 7)).astype(np.float32)
    ids_np = tok.encode(x)
    ids_t = tok.encode(torch.from_numpy(x))
    assert ids_np.dtype == np.int64 and ids_t.dtype == torch.int64 and ids_np.shape == (64, 7)
    np.testing.assert_array_equal(ids_np, ids_t.numpy())
    assert ids_np.min() >= 512 and ids_np.max() <= 767
    back = tok.decode(ids_np)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, tok.decode(ids_t).numpy(), atol=1e-7)
    assert np.abs(back - x).max() <= 2 / 255 + 1e-6  # within one bin width
    assert tok.is_action(ids_np).all()
    assert not tok.is_action(np.array([511, 768, 2])).any()


@pytest.mark.parametrize("kwargs", [{"n_bins": 1}, {"base_vocab_size": 100}, {"min_action": 1.0}])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        ActionTokenizer(**kwargs)


@pytest.mark.slow
def test_model_package_never_imports_tensorflow():
    import subprocess
    import sys

    code = ("import sys, pipeline.model, pipeline.model.vla, pipeline.model.inference; "
            "bad = [m for m in ('tensorflow', 'ray') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
