"""Model side: action/text tokenizers, prompt building + collation, and the VLA model."""

from pipeline.model.presets import PRESETS, InitConfig, VisionSpec, VLAConfig, get_preset
from pipeline.model.prompt import IGNORE_INDEX, ActionPromptBuilder, collate, format_prompt
from pipeline.model.text_tokenizer import build_demo_tokenizer, load_text_tokenizer, save_text_tokenizer
from pipeline.model.tokenizer import ActionTokenizer

__all__ = [
    "IGNORE_INDEX",
    "InitConfig",
    "PRESETS",
    "ActionPromptBuilder",
    "ActionTokenizer",
    "VLA",
    "VLAConfig",
    "VLAOutput",
    "VLAPolicy",
    "VisionSpec",
    "action_metrics",
    "build_demo_tokenizer",
    "build_vla",
    "collate",
    "format_prompt",
    "get_preset",
    "load_policy",
    "load_pretrained_vla",
    "load_text_tokenizer",
    "save_text_tokenizer",
    "unnormalize_action",
]


def __getattr__(name: str):
    # torch / transformers / timm load only when the model itself is asked for.
    if name in ("VLA", "VLAOutput", "action_metrics", "build_vla"):
        from pipeline.model import vla

        return getattr(vla, name)
    if name == "load_pretrained_vla":
        from pipeline.model import pretrained

        return pretrained.load_pretrained_vla
    if name in ("VLAPolicy", "load_policy", "unnormalize_action"):
        from pipeline.model import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'pipeline.model' has no attribute {name!r}")
