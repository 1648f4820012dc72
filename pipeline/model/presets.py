"""Model presets and the typed ``VLAConfig``.

``VLAConfig`` names a preset; any field left at None takes the preset's value
(``cfg.resolved()`` returns the fully filled copy that is saved with checkpoints).

Presets (Prismatic/OpenVLA architecture: fused DINOv2 + SigLIP patch features -> GELU MLP -> Llama-2):
- ``tiny``:  CPU demo/test model: 112 px images, two 2-block ViTs (dim 128, patch 14 -> 8 x 8 = 64
  patches each), Llama 3 layers x 192 hidden (6 heads, MLP 384); vocab from the demo tokenizer
  (~2.6M params with the 832-row demo vocab). Learns the fixture scene (sign of block - effector
  per axis) to >= 95% action-token accuracy in ~100 steps of batch 32 (AdamW lr 2e-3, clip 1.0,
  1,800 frames; measured single-process): random-init tiny models need lr ~1e-3..3e-3, not 2e-5.
- ``small``: 224 px, two ViT-S/14-like encoders (12 x 384), Llama 12 x 768; ~180M params with the
  Llama-2 vocab.
- ``7b``:    OpenVLA-7B shapes: ``vit_large_patch14_reg4_dinov2`` + ``vit_so400m_patch14_siglip_224``
  at 224 px (256 patches each, features of the second-to-last block), Llama-2-7B
  (4096 x 32 layers, 32 heads, 11008 MLP), vocab 32000 + ``<PAD>`` padded to 32064.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ConfigError, UserError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InitConfig",
    "PRESETS",
    "SIGLIP_MEAN",
    "SIGLIP_STD",
    "VLAConfig",
    "VisionSpec",
    "get_preset",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(kw_only=True)
class VisionSpec:
    """One vision encoder: a timm model name + kwargs overriding its architecture.

    ``feature_block``: index (negative = from the end) of the block whose output (patch tokens
    only, no final norm) is used; blocks after it are pruned. OpenVLA uses the second-to-last (-2).
    """

    name: str
    timm_model: str
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    feature_block: int = -2


@dataclass(kw_only=True)
class InitConfig:
    """Where the model's starting weights come from (``model.init.*``; empty: random init). Loaded by
    :func:`pipeline.model.init_weights.apply_init`."""

    vla: str = field(default="", metadata={"help": "a whole VLA: `vla export` folder or OpenVLA checkpoint (local, gs://, hub id); model.* and data.tokenizer then come from it"})
    dino: str = field(default="", metadata={"help": "first vision tower from timm weights (file, folder with model.safetensors, gs://, hub id e.g. timm/vit_large_patch14_reg4_dinov2.lvd142m)"})
    siglip: str = field(default="", metadata={"help": "second vision tower from timm weights (same forms as dino)"})
    projector: str = field(default="", metadata={"help": "projector from a .safetensors file (keys 0/2/4 or fc1/fc2/fc3)"})
    llm: str = field(default="", metadata={"help": "Llama from a Hugging Face model folder (local, gs://, hub id e.g. meta-llama/Llama-2-7b-hf)"})

    def __post_init__(self) -> None:
        parts = [k for k in ("dino", "siglip", "projector", "llm") if getattr(self, k)]
        if self.vla and parts:
            raise UserError(f"model.init.vla loads every weight; leave model.init.{parts[0]} empty")

    @property
    def sources(self) -> dict[str, str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v}


@dataclass(kw_only=True)
class VLAConfig:
    """Model config. ``preset`` selects defaults; None fields take the preset's value.

    Fields:
        preset: "tiny" | "small" | "7b".
        image_size: square input size the encoders expect (pixel_values of another size are
            resized bilinearly inside the model).
        llm_hidden_size, llm_num_layers, llm_num_heads, llm_num_kv_heads, llm_intermediate_size,
        llm_max_position_embeddings, llm_rope_theta, llm_rms_norm_eps: Llama config.
        vision_depth: override the depth of every vision encoder (tests/demos; None = preset).
        vocab_size: LLM vocab before padding (text tokenizer ``len()``, i.e. incl. <PAD>);
            usually given to ``build_vla(vocab_size=...)``.
        pad_vocab_multiple: embedding rows are padded up to a multiple of this (OpenVLA: 64).
        pad_token_id: the <PAD> id (Llama-2: 32000).
        attn_implementation: "sdpa" or "eager" (LLM and nothing else).
        vision_trainable: train the vision encoders (OpenVLA: True).
        initializer_range: std of the LLM's random init (ViTs: timm init; projector: torch default).
        init: pretrained starting weights (``model.init.*``, :mod:`pipeline.model.init_weights`).
    """

    preset: str = field(default="tiny", metadata={"help": "tiny | small | 7b (fields left None take the preset's value)"})
    image_size: int | None = field(default=None, metadata={"help": "square encoder input size (tiny 112, others 224)"})
    llm_hidden_size: int | None = field(default=None, metadata={"help": "Llama hidden size"})
    llm_num_layers: int | None = field(default=None, metadata={"help": "Llama decoder layers"})
    llm_num_heads: int | None = field(default=None, metadata={"help": "Llama attention heads"})
    llm_num_kv_heads: int | None = field(default=None, metadata={"help": "Llama KV heads (None = llm_num_heads)"})
    llm_intermediate_size: int | None = field(default=None, metadata={"help": "Llama MLP size"})
    llm_max_position_embeddings: int | None = field(default=None, metadata={"help": "Llama max positions"})
    llm_rope_theta: float | None = field(default=None, metadata={"help": "RoPE theta"})
    llm_rms_norm_eps: float | None = field(default=None, metadata={"help": "RMSNorm epsilon"})
    vision_depth: int | None = field(default=None, metadata={"help": "override the block count of every vision encoder"})
    vocab_size: int | None = field(default=None, metadata={"help": "LLM vocab before padding (len(text tokenizer)); set by build_vla"})
    pad_vocab_multiple: int = field(default=64, metadata={"help": "embedding rows padded to a multiple of this"})
    pad_token_id: int | None = field(default=None, metadata={"help": "<PAD> id (Llama-2: 32000)"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "LLM attention: sdpa | eager"})
    vision_trainable: bool = field(default=True, metadata={"help": "train the vision encoders"})
    initializer_range: float = field(default=0.02, metadata={"help": "std of the LLM random init"})
    init: InitConfig = field(default_factory=InitConfig)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError("preset", self.preset, f"expected one of {sorted(PRESETS)}")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ConfigError("attn_implementation", self.attn_implementation, "expected 'sdpa' or 'eager'")
        for key in ("image_size", "llm_hidden_size", "llm_num_layers", "llm_num_heads",
                    "llm_intermediate_size", "vocab_size", "vision_depth"):
            v = getattr(self, key)
            if v is not None and int(v) <= 0:
                raise ConfigError(key, v, "must be a positive integer")
        if self.pad_vocab_multiple <= 0:
            raise ConfigError("pad_vocab_multiple", self.pad_vocab_multiple, "must be >= 1")
        self._resolved_values()  # the preset's values combined with ours must fit together

    def _resolved_values(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k, v in PRESETS[self.preset].items():
            if k in values and values[k] is None:
                values[k] = v
        if values["llm_num_kv_heads"] is None:
            values["llm_num_kv_heads"] = values["llm_num_heads"]
        if values["llm_num_heads"] % values["llm_num_kv_heads"]:
            raise ConfigError("llm_num_kv_heads", values["llm_num_kv_heads"],
                              f"must divide llm_num_heads={values['llm_num_heads']}")
        if values["llm_hidden_size"] % values["llm_num_heads"]:
            raise ConfigError("llm_hidden_size", values["llm_hidden_size"],
                              f"must be divisible by llm_num_heads={values['llm_num_heads']}")
        return values

    def resolved(self) -> VLAConfig:
        """A copy with every None field filled from the preset (vocab_size may stay None)."""
        return VLAConfig(**self._resolved_values())

    @property
    def vision_specs(self) -> tuple[VisionSpec, ...]:
        """The preset's vision encoders, with ``image_size``/``vision_depth`` applied."""
        r = self.resolved()
        specs = []
        for s in PRESETS[self.preset]["vision"]:
            kw = dict(s.timm_kwargs, img_size=r.image_size)
            if r.vision_depth is not None:
                kw["depth"] = r.vision_depth
            specs.append(dataclasses.replace(s, timm_kwargs=kw))
        return tuple(specs)

    def padded_vocab_size(self, vocab_size: int | None = None) -> int:
        """``vocab_size`` (or the config's) rounded up to ``pad_vocab_multiple``."""
        v = vocab_size if vocab_size is not None else self.resolved().vocab_size
        if v is None:
            raise ValueError("model.vocab_size is not set: pass vocab_size= (len(text_tokenizer))")
        m = self.pad_vocab_multiple
        return ((int(v) + m - 1) // m) * m

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VLAConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"VLAConfig: unknown keys {unknown}; known: {sorted(names)}")
        if isinstance(d.get("init"), dict):
            d = dict(d, init=InitConfig(**d["init"]))
        return cls(**d)


def _tiny_vits() -> tuple[VisionSpec, ...]:
    # 112 px / patch 14 = 8 x 8 patches: one patch per cell of the fixture scene grid (scene.GRID)
    common = {"patch_size": 14, "embed_dim": 128, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0,
              "num_classes": 0}
    return (
        VisionSpec(name="dino", timm_model="vit_small_patch14_reg4_dinov2",
                   timm_kwargs=dict(common), mean=IMAGENET_MEAN, std=IMAGENET_STD, feature_block=-1),
        VisionSpec(name="siglip", timm_model="vit_so400m_patch14_siglip_224",
                   timm_kwargs=dict(common, global_pool="avg"), mean=SIGLIP_MEAN, std=SIGLIP_STD,
                   feature_block=-1),
    )


def _small_vits() -> tuple[VisionSpec, ...]:
    common = {"embed_dim": 384, "depth": 12, "num_heads": 6, "mlp_ratio": 4.0, "num_classes": 0}
    return (
        VisionSpec(name="dino", timm_model="vit_small_patch14_reg4_dinov2", timm_kwargs=dict(common),
                   mean=IMAGENET_MEAN, std=IMAGENET_STD),
        VisionSpec(name="siglip", timm_model="vit_so400m_patch14_siglip_224",
                   timm_kwargs=dict(common, global_pool="avg", mlp_ratio=4.0),
                   mean=SIGLIP_MEAN, std=SIGLIP_STD),
    )


def _openvla_vits() -> tuple[VisionSpec, ...]:
    return (
        VisionSpec(name="dino", timm_model="vit_large_patch14_reg4_dinov2", timm_kwargs={"num_classes": 0},
                   mean=IMAGENET_MEAN, std=IMAGENET_STD),
        VisionSpec(name="siglip", timm_model="vit_so400m_patch14_siglip_224",
                   timm_kwargs={"num_classes": 0}, mean=SIGLIP_MEAN, std=SIGLIP_STD),
    )


_LLAMA2_7B = {
    "llm_hidden_size": 4096, "llm_num_layers": 32, "llm_num_heads": 32,
    "llm_intermediate_size": 11008, "llm_max_position_embeddings": 4096, "llm_rope_theta": 10000.0,
    "llm_rms_norm_eps": 1e-5,
}

PRESETS: dict[str, dict[str, Any]] = {
    "7b": dict(_LLAMA2_7B, image_size=224, vocab_size=32001, pad_token_id=32000, vision=_openvla_vits()),
}
PRESETS["small"] = dict(
    PRESETS["7b"], llm_hidden_size=768, llm_num_layers=12, llm_num_heads=12,
    llm_intermediate_size=2048, llm_max_position_embeddings=2048, vision=_small_vits())
PRESETS["tiny"] = dict(
    PRESETS["small"], image_size=112, llm_hidden_size=192, llm_num_layers=3, llm_num_heads=6,
    llm_intermediate_size=384, llm_max_position_embeddings=512, vocab_size=None, pad_token_id=None,
    vision=_tiny_vits())


def get_preset(name: str) -> VLAConfig:
    """The resolved config of preset ``name``."""
    return VLAConfig(preset=name).resolved()
