"""`vla train model.init.*`: the run starts from the given weights and says so (log line + summary), a
resumed run does not load them again, `model.init.vla` takes the model and tokenizer from a checkpoint,
and mismatches are one line with nothing written."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from pipeline import fs
from pipeline.errors import UserError

ARGS = ["data.source=synthetic", "per_device_batch=4", "metrics.progress=false", "metrics.tensorboard=false",
        "stop.accuracy=2.0", "model.llm_num_layers=1", "model.vision_depth=1", "checkpoint.save_every=1000"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """timm folders for both towers and an HF Llama folder, shaped like the tiny preset with ARGS."""
    import timm
    from timm.models import save_for_hf
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.model.presets import VLAConfig

    root = tmp_path_factory.mktemp("weights")
    cfg = VLAConfig(preset="tiny", llm_num_layers=1, vision_depth=1).resolved()
    out = {}
    torch.manual_seed(0)
    for spec in cfg.vision_specs:
        save_for_hf(timm.create_model(spec.timm_model, **spec.timm_kwargs), str(root / spec.name),
                    safe_serialization=True)
        out[spec.name] = str(root / spec.name)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=768, hidden_size=cfg.llm_hidden_size, num_hidden_layers=1,
                                       intermediate_size=cfg.llm_intermediate_size,
                                       num_attention_heads=cfg.llm_num_heads, tie_word_embeddings=False))
    llm.save_pretrained(str(root / "llm"))
    out["llm"] = str(root / "llm")
    return out


def _cfg(args: list[str]):
    from pipeline.config import load_config
    from pipeline.train.config import TrainConfig

    return load_config(TrainConfig, [*ARGS, *args])


def test_train_starts_from_the_given_weights_and_says_so(sources, tmp_path, caplog):
    from safetensors.torch import load_file

    from pipeline.model.pretrained import load_pretrained_vla
    from pipeline.train.export import export_checkpoint
    from pipeline.train.main import train

    run_dir = str(tmp_path / "run")
    init = [f"model.init.dino={sources['dino']}", f"model.init.siglip={sources['siglip']}",
            f"model.init.llm={sources['llm']}"]
    with caplog.at_level(logging.INFO, logger="pipeline.train"):
        summary = train(_cfg([*init, f"run_dir={run_dir}", "stop.max_steps=1", "optim.lr=1e-12"]))
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("model.init: loaded"))
    report = summary["init"]
    assert report["sources"] == {"dino": sources["dino"], "siglip": sources["siglip"], "llm": sources["llm"]}
    assert report["random"] == ["projector"] and report["missing"] == [] and report["unexpected"] == []
    assert f"loaded {report['loaded']} tensors" in line and "random init: projector" in line
    assert fs.read_json(fs.join(run_dir, "summary.json"))["init"] == report
    # one step at lr 1e-12 later, the weights are still the given ones
    export_checkpoint(run_dir, str(tmp_path / "export"), dtype="float32")
    model = load_pretrained_vla(str(tmp_path / "export")).model
    llm = load_file(os.path.join(sources["llm"], "model.safetensors"))
    torch.testing.assert_close(model.llm.model.layers[0].mlp.up_proj.weight, llm["model.layers.0.mlp.up_proj.weight"])
    torch.testing.assert_close(model.llm.model.embed_tokens.weight[:768], llm["model.embed_tokens.weight"])
    dino = load_file(os.path.join(sources["dino"], "model.safetensors"))
    torch.testing.assert_close(model.vision[0].vit.blocks[0].attn.qkv.weight, dino["blocks.0.attn.qkv.weight"])
    # resuming does not load the pretrained weights again (the checkpoint has newer ones)
    with caplog.at_level(logging.INFO, logger="pipeline.train"):
        again = train(_cfg([*init, f"run_dir={run_dir}", "stop.max_steps=2", "optim.lr=1e-12"]))
    assert again["resumed_from"].endswith("step_000001")
    assert again["init"]["skipped"] == "the run resumes from a checkpoint" and again["init"]["loaded"] == 0


def test_init_vla_takes_model_and_tokenizer_from_the_checkpoint(sources, tmp_path):
    from pipeline.model.export_format import save_model_dir
    from pipeline.model.presets import VLAConfig
    from pipeline.model.text_tokenizer import build_demo_tokenizer, load_text_tokenizer
    from pipeline.model.vla import build_vla
    from pipeline.train.main import train

    tok = build_demo_tokenizer(["stack the cups"])
    torch.manual_seed(4)
    src = build_vla(VLAConfig(preset="tiny", llm_num_layers=2, vision_depth=1), vocab_size=len(tok),
                    pad_token_id=tok.pad_token_id)
    save_model_dir(src, str(tmp_path / "openvla"), fmt="openvla", tokenizer=tok, dtype="float32")
    run_dir = str(tmp_path / "run")
    summary = train(_cfg([f"model.init.vla={tmp_path / 'openvla'}", f"run_dir={run_dir}", "stop.max_steps=1"]))
    assert summary["init"]["sources"] == {"model.init.vla": str(tmp_path / "openvla")}
    assert summary["init"]["loaded"] == len(src.state_dict())
    saved = fs.read_json(os.path.join(summary["last_checkpoint"], "model_config.json"))
    assert saved["llm_num_layers"] == 2 and saved["vocab_size"] == len(tok)  # from the checkpoint, not ARGS
    saved_tok = load_text_tokenizer(os.path.join(summary["last_checkpoint"], "tokenizer"))
    assert saved_tok.get_vocab() == tok.get_vocab()  # the checkpoint's tokenizer, not the run's demo one
    # another tokenizer given on purpose: refused in one line before anything is written
    build_demo_tokenizer(["x"], text_vocab_size=600, out_dir=str(tmp_path / "other_tok"))
    with pytest.raises(UserError, match=r"the checkpoint has 832 token rows but the model was built with 896"):
        train(_cfg([f"model.init.vla={tmp_path / 'openvla'}", f"data.tokenizer={tmp_path / 'other_tok'}",
                    f"run_dir={tmp_path / 'run2'}", "stop.max_steps=1"]))
    assert not (tmp_path / "run2").exists()


def test_mismatches_are_one_line_and_write_nothing(sources, tmp_path, capsys):
    from pipeline.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", "model.preset=7b", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.preset=7b needs the Llama-2 tokenizer" in err, err
    assert main(["train", *ARGS, f"run_dir={run_dir}", "model.llm_num_layers=2",
                 f"model.init.llm={sources['llm']}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "num_hidden_layers=1 but model.llm_num_layers=2" in err, err
    assert not run_dir.exists()
