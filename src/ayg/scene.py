"""Scene composition (``ayg compose SPEC.json --out scene.ayg``; paper sec. 4 and fig. 1:
"multiple dynamic 4D objects composed within a large dynamic scene, each with its own
deformation field").

A spec is a JSON file:

    {
      "description": "optional free text, kept in the header",
      "objects": [
        {"asset": "dancer.ayg",           # .ayg asset or Inria .ply, relative to the spec file
         "name": "dancer",                # optional, default: the file's stem
         "scale": 1.0,                    # optional, uniform, > 0
         "rotation": [0, 0, 90],          # optional, Euler degrees, extrinsic xyz (R = Rz·Ry·Rx)
         "quaternion": [1, 0, 0, 0],      # optional alternative to "rotation": w, x, y, z
         "translation": [0.5, 0, 0],      # optional, world units (z up)
         "time_offset": 0.0}              # optional, >= 0: the object starts moving at this time
      ]
    }

Composing a composed asset flattens its objects: each inner object's placement becomes
``entry placement ∘ inner placement`` (scales multiply, rotations compose, translations are
rotated and scaled, time offsets add). The result is an ordinary ``Asset``: it renders,
exports, views and saves like any other.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ayg.asset import Asset, AssetError, AssetObject, Placement, load

ENTRY_KEYS = ("asset", "name", "scale", "rotation", "quaternion", "translation", "time_offset")
SPEC_KEYS = ("objects", "description")


class SceneError(AssetError):
    """An invalid composition spec (one line, naming the file and the offending field)."""


@dataclass(frozen=True)
class SceneEntry:
    """One validated entry of a spec: the asset file (absolute), its placement and its name."""

    asset: Path
    placement: Placement
    name: str


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(_is_number(x) for x in v)


def _entry(spec: Path, i: int, raw: Any) -> SceneEntry:
    where = f"{spec}: objects[{i}]"
    if not isinstance(raw, dict):
        raise SceneError(f"{where} must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(ENTRY_KEYS))
    if unknown:
        raise SceneError(f"{where} has unknown keys {unknown}; allowed: {list(ENTRY_KEYS)}")
    if "asset" not in raw:
        raise SceneError(f"{where} needs an 'asset' (path to a .ayg or .ply file)")
    if not isinstance(raw["asset"], str) or not raw["asset"]:
        raise SceneError(f"{where}.asset must be a non-empty string, got {raw['asset']!r}")
    path = Path(raw["asset"]).expanduser()
    if not path.is_absolute():
        path = spec.parent / path
    if not path.is_file():
        raise SceneError(f"{where}.asset: no such file {path}")

    scale = raw.get("scale", 1.0)
    if not _is_number(scale) or scale <= 0:
        raise SceneError(f"{where}.scale must be a positive number, got {scale!r}")
    translation = raw.get("translation", [0.0, 0.0, 0.0])
    if not _numbers(translation, 3):
        raise SceneError(f"{where}.translation must be a list of 3 numbers, got {translation!r}")
    offset = raw.get("time_offset", 0.0)
    if not _is_number(offset) or offset < 0:
        raise SceneError(f"{where}.time_offset must be a number >= 0, got {offset!r}")
    if "rotation" in raw and "quaternion" in raw:
        raise SceneError(f"{where} has both 'rotation' and 'quaternion'; give one")
    if "quaternion" in raw:
        q = raw["quaternion"]
        if not _numbers(q, 4) or math.hypot(*q) < 1e-12:
            raise SceneError(
                f"{where}.quaternion must be 4 numbers [w, x, y, z], not all 0, got {q!r}"
            )
        placement = Placement(scale, tuple(q), tuple(translation), offset)
    else:
        rot = raw.get("rotation", [0.0, 0.0, 0.0])
        if not _numbers(rot, 3):
            raise SceneError(
                f"{where}.rotation must be 3 Euler angles in degrees [rx, ry, rz], got {rot!r}"
            )
        placement = Placement.from_euler_degrees(
            *rot, scale=scale, translation=translation, time_offset=offset
        )

    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise SceneError(f"{where}.name must be a non-empty string, got {name!r}")
    return SceneEntry(path.resolve(), placement, name)


def load_spec(path: str | os.PathLike) -> list[SceneEntry]:
    """Read and validate a composition spec; raises ``SceneError`` with one line."""
    spec = Path(path)
    if not spec.is_file():
        raise SceneError(f"{spec}: no such file")
    try:
        data = json.loads(spec.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SceneError(f"{spec}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise SceneError(f"{spec}: not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise SceneError(f"{spec}: the spec must be a JSON object with an 'objects' list")
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise SceneError(f"{spec}: unknown keys {unknown}; allowed: {list(SPEC_KEYS)}")
    objects = data.get("objects")
    if not isinstance(objects, list):
        raise SceneError(
            f"{spec}: 'objects' must be a list of objects, got {type(objects).__name__}"
        )
    if not objects:
        raise SceneError(f"{spec}: 'objects' is empty; a scene needs at least one object")
    if "description" in data and not isinstance(data["description"], str):
        raise SceneError(f"{spec}: 'description' must be a string")
    return [_entry(spec, i, raw) for i, raw in enumerate(objects)]


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 2
    while out in taken:
        out, k = f"{name}#{k}", k + 1
    taken.add(out)
    return out


def compose_assets(
    parts: Sequence[tuple[Asset, Placement, str]], header: dict | None = None
) -> Asset:
    """Place assets in one scene. ``parts``: (asset, placement, name) triples; objects of a
    multi-object asset are flattened and named ``name/inner``. Clouds and motions are shared
    with the inputs, not copied."""
    if not parts:
        raise SceneError("a scene needs at least one object")
    objects: list[AssetObject] = []
    prompts: list[str] = []
    sources = []
    taken: set[str] = set()
    for asset, placement, name in parts:
        multi = len(asset.objects) > 1
        for o in asset.objects:
            full = f"{name}/{o.name}" if multi else name
            objects.append(
                AssetObject(o.cloud, o.motion, placement.compose(o.placement), _unique(full, taken))
            )
        prompts += [p for p in asset.prompts if p not in prompts]
        sources.append(
            {
                "name": name,
                "placement": placement.to_dict(),
                "prompts": asset.prompts,
                "config": asset.header.get("config", {}),
            }
        )
    out_header = {"prompts": prompts, "config": {}, "scene": {"sources": sources}}
    out_header.update(header or {})
    return Asset(objects, out_header)


def compose(spec_path: str | os.PathLike, device: str = "cpu") -> Asset:
    """Build the scene asset described by a spec file (see the module docstring)."""
    spec = Path(spec_path)
    entries = load_spec(spec)
    parts = []
    for e in entries:
        parts.append((load(e.asset, device=device), e.placement, e.name))
    data = json.loads(spec.read_text(encoding="utf-8"))
    asset = compose_assets(parts)
    scene = asset.header["scene"]
    scene["spec"] = spec.name
    for src, e in zip(scene["sources"], entries, strict=True):
        src["asset"] = os.path.relpath(e.asset, spec.resolve().parent)
    if "description" in data:
        scene["description"] = data["description"]
    return asset
