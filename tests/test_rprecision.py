"""CLIP R-Precision (F.1): the vote and the retrieval against hand-computed cases, the torch
preprocessing against the model's own CLIPImageProcessor, and ``ayg eval --clip`` end to end on
a tiny random CLIP saved in the official transformers layout (nothing downloaded)."""

from __future__ import annotations

import json
import string
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ayg.rprecision import ClipRetriever, r_precision, vote


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    d = tmp_path_factory.mktemp("tiny-clip")
    chars = list(string.ascii_lowercase) + [","]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt")).save_pretrained(d)
    eos = vocab["<|endoftext|>"]
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=eos,
        pad_token_id=eos,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ).save_pretrained(d)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(d)
    return d


def test_vote_majority_and_tie_break():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.7, 0.0]])
    assert vote(sim) == 0  # two views of three retrieve prompt 0
    # a 1–1 tie: prompt 1's summed similarity (0.2 + 0.95) beats prompt 0's (0.6 + 0.3)
    tie = torch.tensor([[0.6, 0.2, 0.0], [0.3, 0.95, 0.0]])
    assert vote(tie) == 1


class FakeAsset:
    """Renders view c as a constant image of value c/100, so each view is recognisable."""

    duration, device = 1.0, torch.device("cpu")

    def render(self, cams, times, background=None):
        c = len(times)
        value = torch.arange(c, dtype=torch.float32).view(c, 1, 1, 1) / 100
        return SimpleNamespace(rgb=value.expand(c, 3, 4, 4))


class FakeRetriever:
    """Text features: the unit vectors e_0, e_1, e_2. View c of 20 retrieves prompt 0 for
    c < 12 and prompt 2 otherwise."""

    device = torch.device("cpu")

    def text_features(self, prompts):
        return torch.eye(3)[: len(prompts)]

    def image_features(self, images):
        view = (images[:, 0, 0, 0] * 100).round().long()
        return torch.eye(3)[torch.where(view < 12, 0, 2)]


def test_r_precision_hand_computed():
    prompts = ["a red ball", "a blue cube", "a green cone"]
    res = r_precision(
        [FakeAsset(), FakeAsset()], ["a red ball", "a green cone"], prompts, FakeRetriever()
    )
    # both assets' 20 views vote 12 : 8 for prompt 0: the first is right, the second wrong
    assert res["r_precision"] == 0.5 and res["r_precision_tau0"] == 0.5
    first, second = res["assets"]
    assert first["retrieved_4d"] == "a red ball" and first["view_accuracy_4d"] == 12 / 20
    assert second["retrieved_4d"] == "a red ball" and second["view_accuracy_4d"] == 8 / 20
    assert len(first["times"]) == 20 and all(0 <= t <= 1 for t in first["times"])
    with pytest.raises(ValueError, match="does not contain"):
        r_precision([FakeAsset()], ["a yellow ring"], prompts, FakeRetriever())


def test_features_match_the_model_and_its_processor(tiny_clip):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    r = ClipRetriever.from_pretrained(str(tiny_clip), local_files_only=True)
    model = CLIPModel.from_pretrained(tiny_clip, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(tiny_clip, local_files_only=True)
    proc = CLIPImageProcessor.from_pretrained(tiny_clip, local_files_only=True)
    prompts = ["a red ball", "a blue cube, side view"]
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(
            **tok(prompts, padding=True, return_tensors="pt"),
            pixel_values=proc(
                [(im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for im in images],
                return_tensors="pt",
            )["pixel_values"],
        )
    torch.testing.assert_close(r.text_features(prompts), ref.text_embeds, atol=1e-5, rtol=1e-4)
    quantised = (images * 255).round() / 255  # what the processor saw
    torch.testing.assert_close(r.image_features(quantised), ref.image_embeds, atol=1e-4, rtol=1e-3)


def test_eval_clip_command_end_to_end(tiny_clip, tmp_path, capsys):
    from ayg.asset import Asset
    from ayg.cli import main
    from ayg.config import tiny_preset
    from ayg.deformation import Motion
    from ayg.gaussians import GaussianCloud
    from ayg.stages import new_segment

    cloud = GaussianCloud.init_sphere(n=50, radius=0.3, sh_degree=0, generator=torch.Generator())
    motion = Motion([new_segment(tiny_preset().stage2, "base", "a blue cone nodding", "cpu")])
    path = tmp_path / "cone.ayg"
    Asset.from_cloud(cloud, motion=motion, prompts=["a blue cone nodding"], config={}).save(path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue cone nodding\na red ball spinning\na green ring swaying\n")
    rc = main(
        [
            "eval",
            str(path),
            "--clip",
            str(tiny_clip),
            "--prompts",
            str(prompts),
            "--json",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["prompt_set_size"] == 3 and len(res["assets"]) == 1
    assert res["assets"][0]["retrieved_4d"] in prompts.read_text().splitlines()
    assert 0.0 <= res["r_precision"] <= 1.0
    rc = main(["eval", str(path), "--clip", str(tiny_clip), "--device", "cpu"])
    assert rc == 2 and "--prompts" in capsys.readouterr().err
