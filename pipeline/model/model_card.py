"""The ``README.md`` model card written with every export: front matter, model, data, training, files.

Only facts the export knows are written: the model config, parameter count, the dataset
statistics (datasets, transitions, trajectories), and, for a training checkpoint, the mixture,
step, epoch and the final moving-average action-token accuracy of the stop rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.model.presets import VLAConfig

__all__ = ["TrainingFacts", "model_card"]


@dataclass
class TrainingFacts:
    """What a training checkpoint says about its run (all optional)."""

    checkpoint: str = ""
    mixture: str = ""
    data_root: str = ""
    step: int | None = None
    epoch: float | None = None
    action_accuracy: float | None = None
    accuracy_window: int | None = None
    global_batch: int | None = None
    base: str = ""
    init: dict[str, str] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)


def _front_matter(fmt: str, source: str) -> list[str]:
    lines = ["---", f"library_name: {'transformers' if fmt == 'openvla' else 'vla-pipeline'}",
             "pipeline_tag: robotics", "tags:", "- robotics", "- vision-language-action", "- openvla"]
    if fmt == "openvla":
        lines.append("- custom_code")
    if source and "/" in source and "://" not in source and not source.startswith(("/", ".")):
        lines.append(f"base_model: {source}")
    return lines + ["---", ""]


def _model_section(cfg: VLAConfig, params: int) -> list[str]:
    towers = " + ".join(f"{s.name} (`{s.timm_model}`, block {s.feature_block})" for s in cfg.vision_specs)
    return ["## Model", "",
            f"- preset `{cfg.preset}`, {params / 1e6:,.1f}M parameters, {cfg.image_size} px images",
            f"- vision: {towers}, features of that block, projected by a 3-layer GELU MLP",
            f"- LLM: Llama, {cfg.llm_num_layers} layers x {cfg.llm_hidden_size} hidden, {cfg.llm_num_heads} heads, "
            f"vocabulary {cfg.vocab_size} tokens padded to {cfg.padded_vocab_size()} rows",
            "- actions: 7 dims x 256 bins on the last 256 ids of the base vocabulary", ""]


def _data_section(stats: dict[str, Any], train: TrainingFacts | None) -> list[str]:
    lines = ["## Data", ""]
    if train and train.mixture:
        lines.append(f"Mixture `{train.mixture}`" + (f" from `{train.data_root}`" if train.data_root else "") + ".")
        lines.append("")
    if stats:
        lines += ["| dataset | transitions | trajectories |", "|---|---:|---:|"]
        for name in sorted(stats):
            s = stats[name] if isinstance(stats[name], dict) else {}
            lines.append(f"| {name} | {s.get('num_transitions', '-')} | {s.get('num_trajectories', '-')} |")
        lines += ["", "Action statistics (q01/q99 per dimension) are in `dataset_statistics.json` (OpenVLA "
                  "layout: also `config.json` `norm_stats`); predicted actions are un-normalized with the "
                  "dataset you name (`unnorm_key`).", ""]
    else:
        lines += ["No dataset statistics were saved: actions come out normalized to [-1, 1].", ""]
    return lines


def _training_section(train: TrainingFacts | None, source: str) -> list[str]:
    lines = ["## Training", ""]
    if train is None:
        where = f"Converted from `{source}`" if source else "Saved from memory"
        return lines + [f"{where} (no training run recorded with this export).", ""]
    if train.step is not None:
        lines.append(f"- steps: {train.step}" + (f" (global batch {train.global_batch})" if train.global_batch else ""))
    if train.epoch is not None:
        lines.append(f"- data epochs: {train.epoch:.3f}")
    if train.action_accuracy is not None:
        lines.append(f"- final action-token accuracy: {train.action_accuracy:.4f} "
                     f"(training batches, mean of the last {train.accuracy_window} steps)")
    if train.base:
        lines.append(f"- fine-tuned from `{train.base}`")
    if train.lora:
        lines.append(f"- LoRA rank {train.lora.get('rank')}, alpha {train.lora.get('alpha')}, merged into the weights")
    for part, url in sorted(train.init.items()):
        lines.append(f"- initialized `{part}` from `{url}`")
    if train.checkpoint:
        lines.append(f"- checkpoint: `{train.checkpoint}`")
    return lines + [""]


def _files_section(fmt: str, dtype: str, files: list[str]) -> list[str]:
    lines = ["## Files", "", f"- weights: {', '.join(f'`{f}`' for f in files)} ({dtype})"]
    if fmt == "openvla":
        lines += ["- layout: OpenVLA / Prismatic (`vision_backbone.featurizer.*`, `vision_backbone.fused_featurizer.*`, "
                  "`projector.fc1-3`, `language_model.*`), `config.json` with `norm_stats`",
                  "- not written: the vision blocks after the feature block, the final vision norms and SigLIP's "
                  "attention-pool head (features come from the second-to-last block, so they are never used; "
                  "OpenVLA's loader reports them as newly initialized)"]
    else:
        lines.append("- `config.json` (`vla_config`), tokenizer files, `dataset_statistics.json`, `train_config.yaml`")
    return lines + [""]


def _usage(fmt: str) -> list[str]:
    lines = ["## Use", "", "```python", "from pipeline.inference import VLAPolicy", "",
             'policy = VLAPolicy.from_pretrained("<this folder>")',
             'action = policy.predict_action(image, "pick up the red block", unnorm_key="<dataset>")', "```", ""]
    if fmt == "openvla":
        lines += ["With OpenVLA's own code (7b preset only): `AutoModelForVision2Seq.from_pretrained(<folder>, "
                  "trust_remote_code=True)`; `config.json` points at the model code published with "
                  "`openvla/openvla-7b`.", ""]
    return lines


def model_card(*, name: str, fmt: str, cfg: VLAConfig, params: int, stats: dict[str, Any],
               train: TrainingFacts | None, dtype: str, files: list[str], source: str = "") -> str:
    """The model card text (Markdown with YAML front matter)."""
    cfg = cfg.resolved()
    lines = _front_matter(fmt, source) + [f"# {name}", "",
                                           "A vision-language-action model (OpenVLA architecture) exported by "
                                           "`vla export`" + (" in the OpenVLA layout." if fmt == "openvla" else "."), ""]
    lines += _model_section(cfg, params) + _data_section(stats, train) + _training_section(train, source)
    lines += _files_section(fmt, dtype, files) + _usage(fmt)
    return "\n".join(lines)
