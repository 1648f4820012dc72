"""Validation during training: a fixed set of validation frames (the same at every evaluation,
untouched by the training stream), loss and accuracy equal to a by-hand computation, per dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.data.fixtures.curated import INSTRUCTIONS, write_curated_dataset
from pipeline.data.mixture.files import Mixture
from pipeline.train.config import TrainConfig
from pipeline.train.evaluate import build_evaluator


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pipeline.model import ActionPromptBuilder, VLAConfig, build_demo_tokenizer, build_vla

    root = str(tmp_path_factory.mktemp("curated"))
    write_curated_dataset(root, "bridge_orig", episode_lengths=[6, 7, 5, 6], val_lengths=[5, 6], image_size=16, seed=0)
    write_curated_dataset(root, "taco_play", episode_lengths=[6, 5, 7], val_lengths=[6], image_size=16, seed=1)
    write_curated_dataset(root, "fractal20220817_data", episode_lengths=[6, 6], image_size=16, seed=2)  # no val
    mixture = Mixture(name="mix", datasets={"bridge_orig": 1.0, "taco_play": 2.0, "fractal20220817_data": 1.0})
    tok = build_demo_tokenizer(INSTRUCTIONS)
    torch.manual_seed(0)
    model = build_vla(VLAConfig(preset="tiny", llm_num_layers=1, vision_depth=1, image_size=32), vocab_size=len(tok),
                      pad_token_id=tok.pad_token_id)
    cfg = load_config(TrainConfig, [f"data.data_root={root}", "per_device_batch=4", "eval.every_steps=3",
                                    "eval.batches=2", "eval.seed=7"])
    return cfg, mixture, model, ActionPromptBuilder(tok), tok


def _evaluator(setup, **over):
    cfg, mixture, model, builder, tok = setup
    return build_evaluator(cfg, mixture=mixture, prompt_builder=builder, pad_id=tok.pad_token_id, rank=0, world=1,
                           image_size=32, device=torch.device("cpu"))


def test_fixed_set_loss_and_accuracy_by_hand(setup):
    import torch.nn.functional as F

    from pipeline.data.stream.training_stream import TrainingStream

    cfg, mixture, model, builder, tok = setup
    ev = _evaluator(setup)
    assert ev.names == ["bridge_orig", "taco_play"]  # fractal has no validation episodes
    assert [ev.due(s) for s in (1, 2, 3, 6)] == [False, False, True, True]
    first = ev.run(model)
    # the same frames every time, whatever happens in between (another stream read, the model in train mode)
    model.train()
    second = ev.run(model)
    assert first == second and model.training
    assert first["eval_samples"] == 2 * 4 and set(first["eval_dataset_accuracy"]) == {"bridge_orig", "taco_play"}
    # by hand: the validation stream's first two batches, cross-entropy summed over supervised tokens
    loss, tokens, correct, count, per = 0.0, 0, 0, 0, {}
    run = {"data_root": cfg.data.data_root, "batch_size": ev.stream.batch_size, "seed": ev.stream.seed,
           "resolution": ev.stream.resolution}
    with TrainingStream(ev.stream.cfg, **run, rank=0, world_size=1, prompt_builder=builder, pad_id=tok.pad_token_id,
                        mixture=Mixture(name="v", datasets={"bridge_orig": 1.0, "taco_play": 2.0})) as stream:
        model.eval()
        for _ in range(2):
            batch = next(stream)
            with torch.no_grad():
                logits = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                               full_logits=True).logits[:, -batch["input_ids"].shape[1]:]
            for i, name in enumerate(m[0] for m in batch["meta"]):
                sup = np.flatnonzero(batch["labels"][i].numpy() != -100)
                target = batch["labels"][i, sup]
                lg = logits[i, sup - 1].float()  # position t predicts token t + 1
                ce = F.cross_entropy(lg, target, reduction="sum").item()
                action = builder.action_tokenizer.is_action(target)
                hit = int(((lg.argmax(-1) == target) & action).sum())
                loss, tokens, correct, count = loss + ce, tokens + len(sup), correct + hit, count + int(action.sum())
                p = per.setdefault(name, [0, 0])
                p[0], p[1] = p[0] + hit, p[1] + int(action.sum())
        model.train()
    assert first["eval_loss"] == pytest.approx(loss / tokens, rel=1e-6)
    assert first["eval_action_accuracy"] == pytest.approx(correct / count, abs=1e-12)
    assert first["eval_dataset_accuracy"] == pytest.approx({n: c / k for n, (c, k) in per.items()}, abs=1e-12)


def test_off_and_without_validation_data(setup, tmp_path, caplog):
    cfg, mixture, model, builder, tok = setup
    off = load_config(TrainConfig, [f"data.data_root={cfg.data.data_root}", "eval.every_steps=0"])
    assert build_evaluator(off, mixture=mixture, prompt_builder=builder, pad_id=tok.pad_token_id, rank=0, world=1,
                           image_size=32, device=torch.device("cpu")) is None
    only = Mixture(name="no_val", datasets={"fractal20220817_data": 1.0})
    with caplog.at_level("WARNING", logger="pipeline.train"):
        assert build_evaluator(cfg, mixture=only, prompt_builder=builder, pad_id=tok.pad_token_id, rank=0,
                               world=1, image_size=32, device=torch.device("cpu")) is None
    assert "no dataset of mixture no_val has validation episodes" in caplog.text
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="eval.batches"):
        load_config(TrainConfig, ["eval.batches=0"])
