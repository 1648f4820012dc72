"""model.init.*: vision towers from timm folders give the features of timm's own model loaded with the same
weights (position table resampled from another resolution), the LLM from an HF folder (local and gs://)
with its token rows padded, the projector from Prismatic names, and one-line refusals (tokenizer that
does not fit the LLM, another architecture, a 7b model with the demo tokenizer)."""

from __future__ import annotations

import pytest
import torch
from openvla_helpers import small_config

from pipeline import fs
from pipeline.errors import UserError
from pipeline.model.init_weights import apply_init
from pipeline.model.presets import InitConfig
from pipeline.model.vla import build_vla

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tok():
    from pipeline.model.text_tokenizer import build_demo_tokenizer

    return build_demo_tokenizer(["pick up the red block"])


def _fresh(tok, seed: int = 5):
    torch.manual_seed(seed)
    return build_vla(small_config(tok))


def _timm_kwargs(spec, img_size: int) -> dict:
    return {**{k: v for k, v in spec.timm_kwargs.items() if k != "global_pool"}, "img_size": img_size}


@pytest.fixture(scope="module")
def timm_dirs(tmp_path_factory, tok) -> list[str]:
    """Each tower saved the way timm publishes weights (save_for_hf), at 168 px (12 x 12 position table)."""
    import timm
    from timm.models import save_for_hf

    out = []
    for i, spec in enumerate(small_config(tok).vision_specs):
        torch.manual_seed(10 + i)
        src = timm.create_model(spec.timm_model, **_timm_kwargs(spec, 168))  # SigLIP keeps its attn_pool head
        for name, p in src.named_parameters():
            if name.endswith("gamma"):
                p.data.uniform_(0.5, 1.5)
        path = str(tmp_path_factory.mktemp("timm") / spec.name)
        save_for_hf(src, path, safe_serialization=True)
        out.append(path)
    return out


def test_vision_towers_give_timms_own_features(tok, timm_dirs):
    import timm

    model = _fresh(tok)
    report = apply_init(model, InitConfig(dino=timm_dirs[0], siglip=timm_dirs[1]), tokenizer=tok)
    x = torch.rand(2, 3, 224, 224)
    for i, spec in enumerate(model.config.vision_specs):
        ref = timm.create_model(spec.timm_model, pretrained=True, **_timm_kwargs(spec, 224),
                                pretrained_cfg_overlay={"file": f"{timm_dirs[i]}/model.safetensors"}).eval()
        assert ref.pos_embed.shape[1] == 256  # timm resampled its 12 x 12 table to 16 x 16 too
        mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
        with torch.no_grad():
            want = ref.get_intermediate_layers((x - mean) / std, n={len(ref.blocks) - 2})[0]
            got = model.vision[i].eval()(x)
        torch.testing.assert_close(got, want)
    assert report.sources == {"dino": timm_dirs[0], "siglip": timm_dirs[1]}
    assert report.random == ["projector", "llm"] and report.missing == [] and report.unexpected == []
    assert set(report.dropped) == {"vision blocks after the feature block", "vision final norm / pooling head"}


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory, tok) -> str:
    """An HF Llama folder with the tokenizer's base vocabulary (768 rows, like Llama-2's 32000)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = small_config(tok)
    torch.manual_seed(7)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=cfg.llm_hidden_size,
                                       intermediate_size=cfg.llm_intermediate_size, num_hidden_layers=cfg.llm_num_layers,
                                       num_attention_heads=cfg.llm_num_heads, tie_word_embeddings=False))
    path = str(tmp_path_factory.mktemp("llm") / "llama")
    llm.save_pretrained(path)
    return path


def _check_llm(model, llm_dir: str, report) -> None:
    from transformers import LlamaForCausalLM

    src = LlamaForCausalLM.from_pretrained(llm_dir).state_dict()
    ours = model.llm.state_dict()
    for k, v in src.items():
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(ours[k][:768], v) and ours[k].shape[0] == 832
            assert torch.allclose(ours[k][768:], v.mean(0, keepdim=True).expand(64, -1))
        else:
            assert torch.equal(ours[k], v), k
    assert len(report.resized) == 2 and report.random == ["vision.0 (dino)", "vision.1 (siglip)", "projector"]


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_llm_from_hf_folder_with_padded_rows(where, tok, llm_dir, request):
    url = llm_dir
    if where == "gcs":
        url = request.getfixturevalue("gcs_bucket") + "/llama"
        for child in fs.listdir(llm_dir):
            fs.write_bytes(fs.join(url, fs.basename(child)), fs.read_bytes(child))
    model = _fresh(tok)
    report = apply_init(model, InitConfig(llm=url), tokenizer=tok)
    _check_llm(model, llm_dir, report)
    assert report.sources == {"llm": url} and "loaded" in report.line()


def test_projector_from_prismatic_names(tmp_path, tok):
    from safetensors.torch import save_file

    src = _fresh(tok, seed=9).projector
    names = {"0": "fc1", "2": "fc2", "4": "fc3"}
    save_file({f"projector.{names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in src.state_dict().items()},
              str(tmp_path / "projector.safetensors"))
    model = _fresh(tok)
    apply_init(model, InitConfig(projector=str(tmp_path / "projector.safetensors")), tokenizer=tok)
    for a, b in zip(model.projector.state_dict().values(), src.state_dict().values()):
        assert torch.equal(a, b)


def test_tokenizer_that_does_not_fit_the_llm(tmp_path, tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = small_config(tok)
    LlamaForCausalLM(LlamaConfig(vocab_size=500, hidden_size=64, intermediate_size=cfg.llm_intermediate_size,
                                 num_hidden_layers=2, num_attention_heads=4)).save_pretrained(str(tmp_path / "l"))
    with pytest.raises(UserError, match=r"the LLM has 500 token rows but data.tokenizer has 768 tokens \(\+1 added\)"):
        apply_init(_fresh(tok), InitConfig(llm=str(tmp_path / "l")), tokenizer=tok)


def test_llm_of_another_architecture(tmp_path, tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=768, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                 num_attention_heads=4)).save_pretrained(str(tmp_path / "l"))
    with pytest.raises(UserError, match=r"num_hidden_layers=3 but model.llm_num_layers=2; pick the matching"):
        apply_init(_fresh(tok), InitConfig(llm=str(tmp_path / "l")), tokenizer=tok)


def test_timm_file_with_a_stranger_tensor(tmp_path, tok, timm_dirs):
    from safetensors.torch import load_file, save_file

    state = load_file(f"{timm_dirs[0]}/model.safetensors")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "dino.safetensors"))
    with pytest.raises(UserError, match=r"model.init.dino=.*dino.safetensors: unexpected tensor extra.weight"):
        apply_init(_fresh(tok), InitConfig(dino=str(tmp_path / "dino.safetensors")), tokenizer=tok)
    with pytest.raises(UserError, match=r"no timm weights"):
        apply_init(_fresh(tok), InitConfig(dino=str(tmp_path)), tokenizer=tok)


def test_vla_excludes_parts():
    with pytest.raises(UserError, match=r"model.init.vla loads every weight; leave model.init.llm empty"):
        InitConfig(vla="x", llm="y")


@pytest.mark.parametrize("args, ok", [
    (["model.preset=7b"], False),
    (["model.preset=7b", "data.tokenizer=/weights/llama-2"], True),
    (["model.preset=7b", "model.init.vla=openvla/openvla-7b"], True),
    (["model.preset=tiny"], True),
])
def test_7b_with_the_demo_tokenizer_is_refused_at_parse_time(args, ok):
    from pipeline.config import load_config
    from pipeline.train.config import TrainConfig

    if ok:
        load_config(TrainConfig, args)
        return
    with pytest.raises(UserError, match=r"model.preset=7b needs the Llama-2 tokenizer: set data.tokenizer=") as e:
        load_config(TrainConfig, args)
    assert "\n" not in str(e.value)
