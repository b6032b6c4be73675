"""``teachers.cache_dir`` and the per-model revisions reach the real teachers' loaders: a tiny
Stable Diffusion written here into a Hugging Face cache folder with two revisions is loaded
through ``build_teachers`` offline, and the revision asked for is the one that loads. The
multiview and video loaders are checked to hand the same settings on. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from ayg.config import TeacherConfig  # noqa: E402
from ayg.teachers import build_teachers, hub  # noqa: E402
from ayg.teachers.hub import TeacherNotAvailable  # noqa: E402

MODEL = "tiny-org/tiny-sd"


def tiny_unet(seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def write_snapshot(root: Path, unet_seed: int) -> None:
    """A diffusers pipeline folder in the layout of Stable Diffusion 2.1 base."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz,":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (root / "tok").mkdir(parents=True)
    (root / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (root / "tok" / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(root / "tok" / "vocab.json"), str(root / "tok" / "merges.txt"))
    tok.save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=60, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
            pad_token_id=1,
        )
    ).save_pretrained(root / "text_encoder")  # fmt: skip
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=16,
    ).save_pretrained(root / "vae")
    tiny_unet(unet_seed).save_pretrained(root / "unet")
    DDPMScheduler(beta_schedule="scaled_linear").save_config(root / "scheduler")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A Hugging Face hub cache holding MODEL at two commits: main → A (unet seed 0), tag v2 →
    B (unet seed 1)."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / f"models--{MODEL.replace('/', '--')}"
    for commit, seed in (("a" * 40, 0), ("b" * 40, 1)):
        write_snapshot(repo / "snapshots" / commit, seed)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "refs" / "v2").write_text("b" * 40)
    return cache


def unet_weight(teacher) -> torch.Tensor:
    return teacher.unet.conv_in.weight.detach().float().cpu()


@pytest.mark.parametrize("revision,seed", [(None, 0), ("v2", 1), ("b" * 40, 1)])
def test_the_image_revision_asked_for_is_the_one_that_loads(cache, monkeypatch, revision, seed):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = TeacherConfig(
        kind="real",
        image_model=MODEL,
        cache_dir=str(cache),
        image_revision=revision,
        local_files_only=True,
    )
    teacher = build_teachers(cfg, torch.device("cpu"), ("image",))["image"]
    torch.testing.assert_close(unet_weight(teacher), tiny_unet(seed).conv_in.weight.detach())


def test_a_missing_revision_is_one_clear_line(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = TeacherConfig(
        kind="real", image_model=MODEL, cache_dir=str(cache), image_revision="v9",
        local_files_only=True,
    )  # fmt: skip
    with pytest.raises(TeacherNotAvailable, match=MODEL):
        build_teachers(cfg, torch.device("cpu"), ("image",))


def test_multiview_and_video_loaders_get_cache_dir_and_revision(monkeypatch):
    from ayg.teachers.mvdream import MVDreamTeacher
    from ayg.teachers.video import VideoTeacher

    seen = {}

    def record(name):
        def from_pretrained(model_id, **kwargs):
            seen[name] = (model_id, kwargs)
            return object()

        return from_pretrained

    monkeypatch.setattr(MVDreamTeacher, "from_pretrained", record("multiview"))
    monkeypatch.setattr(VideoTeacher, "from_pretrained", record("video"))

    def pipeline_index(model_id, **kwargs):  # the family is read from the same pinned cache
        seen["index"] = (model_id, kwargs)
        return {"unet": ["diffusers", "UNet3DConditionModel"]}

    monkeypatch.setattr(hub, "pipeline_index", pipeline_index)
    cfg = TeacherConfig(
        kind="real", cache_dir="/models", multiview_revision="r-mv", video_revision="r-vid"
    )
    build_teachers(cfg, torch.device("cpu"), ("multiview", "video"))
    assert seen["multiview"][1]["cache_dir"] == "/models"
    assert seen["multiview"][1]["revision"] == "r-mv"
    assert seen["video"][1]["cache_dir"] == "/models"
    assert seen["video"][1]["revision"] == "r-vid"
    assert seen["index"][1]["cache_dir"] == "/models"
    assert seen["index"][1]["revision"] == "r-vid"


def test_mvdream_hands_its_revision_to_the_hub_but_not_to_the_tokenizer(monkeypatch):
    """The revision pins MVDream's own repository; SD 2.1's tokenizer keeps its main branch."""
    import ayg.teachers.mvdream as mv

    calls = []

    def hub_file(model_id, filename, **hub):
        calls.append((model_id, filename, hub.get("revision"), hub.get("cache_dir")))
        return Path("/nonexistent") / filename

    def tokenizer(model_id, **hub):
        calls.append((model_id, "tokenizer", hub.get("revision"), hub.get("cache_dir")))
        raise TeacherNotAvailable("stop here")

    monkeypatch.setattr(mv, "hub_file", hub_file)
    monkeypatch.setattr(mv, "sd_tokenizer", tokenizer)
    with pytest.raises(TeacherNotAvailable, match="stop here"):
        mv.MVDreamTeacher.from_pretrained("MVDream/MVDream", revision="abc", cache_dir="/c")
    assert calls[0] == ("MVDream/MVDream", mv.DEFAULT_FILENAME, "abc", "/c")
    assert calls[1] == (mv.DEFAULT_TOKENIZER_ID, "tokenizer", None, "/c")
