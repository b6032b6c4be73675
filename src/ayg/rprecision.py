"""CLIP R-Precision of 3D and 4D assets, the protocol of F.1 (``ayg eval --clip MODEL_ID``).

Renders of an asset go to a CLIP image encoder; each render retrieves the closest prompt (cosine
similarity of the normalised CLIP embeddings) among a prompt set the user gives; the asset's
retrieval is the majority vote over its views, and R-Precision is the fraction of assets whose
vote is their own prompt (top-1). Views, as in F.1: 20 azimuths 0°, 18°, …, 342° at elevation
15°, distance 3, fov 40°;

* the 3D protocol renders every view at τ = 0 (``r_precision_tau0``),
* the 4D protocol pairs the 20 azimuths with 20 random times τ over the asset's duration
  (``r_precision``; for a static asset the two are the same).

A tie in the vote goes to the tied prompt with the larger summed similarity over the views, so
the result does not depend on the order of the prompt set.

The model is a ``transformers`` ``CLIPModel`` folder (``openai/clip-vit-base-patch32``,
``openai/clip-vit-large-patch14``, ...) from the Hugging Face cache or a local directory, loaded
offline-first like the teachers: missing → one line naming ``hf download MODEL_ID``.
Images are preprocessed in torch the way the model's ``preprocessor_config.json`` says (resize
of the shortest side, centre crop, mean/std), so no PIL round trip is needed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ayg.evaluate import EVAL_VIEWS, eval_cameras


@dataclass
class ClipRetriever:
    """A frozen CLIP model with its tokenizer and image preprocessing."""

    model: Any  # transformers.CLIPModel
    tokenizer: Any
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    resize: int  # shortest side before the crop
    crop: tuple[int, int]  # (H, W) the model sees
    device: torch.device

    @classmethod
    def from_pretrained(
        cls,
        model_id: str,
        device: torch.device | str = "cpu",
        local_files_only: bool | None = None,
        cache_dir: str | None = None,
        revision: str | None = None,
    ) -> ClipRetriever:
        try:
            from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
        except ImportError as e:
            raise ImportError(
                'CLIP R-Precision needs transformers: pip install "ayg[models]"'
            ) from e
        from ayg.teachers.hub import load_component

        hub = dict(local_files_only=local_files_only, cache_dir=cache_dir, revision=revision)
        model = load_component(CLIPModel.from_pretrained, model_id, **hub)
        tokenizer = load_component(AutoTokenizer.from_pretrained, model_id, **hub)
        proc = load_component(CLIPImageProcessor.from_pretrained, model_id, **hub)
        size = proc.size.get("shortest_edge") or min(
            proc.size.get("height"), proc.size.get("width")
        )
        crop = (int(proc.crop_size["height"]), int(proc.crop_size["width"]))
        device = torch.device(device)
        model = model.eval().requires_grad_(False).to(device)
        return cls(
            model=model,
            tokenizer=tokenizer,
            image_mean=tuple(proc.image_mean),
            image_std=tuple(proc.image_std),
            resize=int(size),
            crop=crop,
            device=device,
        )

    @torch.no_grad()
    def text_features(self, prompts: Sequence[str]) -> Tensor:
        """(P, D) unit-norm text embeddings."""
        tok = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
        out = self.model.get_text_features(
            input_ids=tok["input_ids"].to(self.device),
            attention_mask=tok["attention_mask"].to(self.device),
        )
        return F.normalize(_as_tensor(out).float(), dim=-1)

    def preprocess(self, images: Tensor) -> Tensor:
        """images (C, 3, H, W) in [0, 1] -> (C, 3, h, w) normalised model input: bicubic resize of
        the shortest side to ``resize``, centre crop to ``crop``, then (x − mean) / std."""
        _, _, h, w = images.shape
        scale = self.resize / min(h, w)
        size = (max(round(h * scale), self.crop[0]), max(round(w * scale), self.crop[1]))
        x = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False)
        top, left = (size[0] - self.crop[0]) // 2, (size[1] - self.crop[1]) // 2
        x = x[:, :, top : top + self.crop[0], left : left + self.crop[1]].clamp(0.0, 1.0)
        mean = torch.tensor(self.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        """images (C, 3, H, W) in [0, 1] -> (C, D) unit-norm image embeddings."""
        pixels = self.preprocess(images.to(self.device))
        return F.normalize(
            _as_tensor(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1
        )


def _as_tensor(out: Any) -> Tensor:
    """``get_*_features`` return a tensor, or an output object holding ``pooler_output``."""
    return out if isinstance(out, Tensor) else out.pooler_output


def vote(similarity: Tensor) -> int:
    """similarity (V, P) of V views to P prompts -> the prompt index most views retrieve; a tie
    goes to the tied prompt with the larger summed similarity."""
    picks = similarity.argmax(-1).tolist()
    counts = Counter(picks)
    best = max(counts.values())
    tied = [p for p, c in counts.items() if c == best]
    totals = similarity.sum(0)
    return max(tied, key=lambda p: float(totals[p]))


def asset_retrieval(
    asset,
    retriever,
    text_features: Tensor,
    times: Tensor,
    views: int = EVAL_VIEWS,
    resolution: int = 224,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[int, list[int]]:
    """Renders ``views`` F.1 views, view c at global time ``times[c]``, and returns (the voted
    prompt index, each view's retrieved index)."""
    azimuths = torch.arange(views, dtype=torch.float32) * (360.0 / views)
    device = getattr(asset, "device", torch.device("cpu"))
    cams = eval_cameras(azimuths, resolution).to(device)
    bg = torch.tensor(background, dtype=torch.float32, device=device)
    with torch.no_grad():
        rgb = asset.render(cams, times.to(device), background=bg).rgb.clamp(0.0, 1.0)
    sim = retriever.image_features(rgb) @ text_features.to(retriever.device).T  # (V, P)
    return vote(sim.cpu()), sim.argmax(-1).tolist()


def r_precision(
    assets: Sequence,
    prompts: Sequence[str],
    prompt_set: Sequence[str],
    retriever,
    generator: torch.Generator | None = None,
    views: int = EVAL_VIEWS,
    resolution: int = 224,
) -> dict:
    """R-Precision of ``assets`` (asset i generated from ``prompts[i]``) among ``prompt_set``,
    by the 3D (τ = 0) and the 4D (random τ) protocols of F.1. Returns the two fractions and, per
    asset, the voted prompt and each view's retrieved prompt."""
    prompt_set = list(dict.fromkeys(p.strip() for p in prompt_set if p.strip()))
    missing = [p for p in prompts if p.strip() not in prompt_set]
    if missing:
        raise ValueError(
            f"the prompt set does not contain the asset prompt {missing[0]!r}; "
            "R-Precision retrieves an asset's own prompt among the set, so add it"
        )
    text = retriever.text_features(prompt_set)  # (P, D)
    rows = []
    for asset, prompt in zip(assets, prompts, strict=True):
        target = prompt_set.index(prompt.strip())
        tau = torch.rand(views, generator=generator) * float(asset.duration)
        row: dict[str, Any] = {"prompt": prompt.strip(), "times": tau.tolist()}
        for key, times in (("tau0", torch.zeros(views)), ("4d", tau)):
            voted, per_view = asset_retrieval(asset, retriever, text, times, views, resolution)
            row[f"retrieved_{key}"] = prompt_set[voted]
            row[f"correct_{key}"] = voted == target
            row[f"view_accuracy_{key}"] = sum(v == target for v in per_view) / views
        rows.append(row)
    n = max(len(rows), 1)
    return {
        "r_precision": sum(r["correct_4d"] for r in rows) / n,
        "r_precision_tau0": sum(r["correct_tau0"] for r in rows) / n,
        "prompt_set_size": len(prompt_set),
        "assets": rows,
    }


def read_prompt_set(path: str | Path) -> list[str]:
    """One prompt a line (blank lines and lines starting with # skipped)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--prompts file '{p}' does not exist")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(prompts) < 2:
        raise ValueError(f"--prompts file '{p}' needs at least two prompts, got {len(prompts)}")
    return prompts
