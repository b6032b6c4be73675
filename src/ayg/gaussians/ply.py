"""The Inria 3DGS PLY format: ``save_ply`` writes it atomically, ``load_ply`` reads it with a small
parser of its own (ascii or binary, any element order, extra properties ignored) whose every
fault is a one-line ``PlyError``.

``x y z nx ny nz f_dc_0..2 f_rest_0..M-1 opacity scale_0..2 rot_0..3``, float32, ``f_rest``
channel-major (all coefficients of R, then G, then B).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ayg.gaussians.cloud import GaussianCloud, sh_degree_of
from ayg.io_utils import atomic_write

# ----------------------------------------------------------------------------- PLY


class PlyError(ValueError):
    """A PLY file that cannot be read as 3D Gaussians; the message is one line."""


_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_PLY_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_CANONICAL = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
_CANONICAL += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
_EXPECTED = "an Inria 3DGS PLY with x y z f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3"


def ply_field_names(sh_degree: int) -> list[str]:
    """The vertex properties that ``save_ply`` writes, in order."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def save_ply(cloud: GaussianCloud, path: str | os.PathLike) -> Path:
    """Write ``cloud`` as an Inria 3DGS PLY (binary little endian, float32), atomically
    (``ayg.io_utils.atomic_write``). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = cloud.num

    def cpu(t: Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy()

    sh_rest = cpu(cloud.sh_rest).transpose(0, 2, 1).reshape(n, -1)  # (N, 3·(K-1)) channel-major
    log_scales = cpu(cloud.log_scales)
    if log_scales.shape[1] == 1:
        log_scales = np.repeat(log_scales, 3, axis=1)
    quats = (
        cpu(cloud.quats) if cloud.quats is not None else np.tile(np.float32([1, 0, 0, 0]), (n, 1))
    )
    columns = [cpu(cloud.means), np.zeros((n, 3), np.float32), cpu(cloud.sh_dc), sh_rest]
    columns += [cpu(cloud.opacity_logits)[:, None], log_scales, quats]
    data = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype="<f4")  # (N, P)
    names = ply_field_names(cloud.sh_degree)
    assert data.shape[1] == len(names)
    header = ["ply", "format binary_little_endian 1.0", f"comment ayg sh_degree {cloud.sh_degree}"]
    header += [f"element vertex {n}"] + [f"property float {k}" for k in names] + ["end_header"]
    with atomic_write(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(data.tobytes())
    return path


@dataclass
class _Element:
    name: str
    count: int
    props: list[tuple[str, str]]  # (name, numpy type code, or "list")


def _parse_header(raw: bytes, where: str) -> tuple[str, list[_Element], int]:
    """-> (format, elements, offset of the data)."""
    first = raw[:16].split(b"\n", 1)[0].strip()
    if first != b"ply":
        got = "an empty file" if not raw else f"{raw[:16]!r}"
        raise PlyError(f"{where}: not a PLY file (expected the first line 'ply', got {got})")
    fmt: str | None = None
    elements: list[_Element] = []
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise PlyError(
                f"{where}: the PLY header has no 'end_header' line (truncated or corrupt file)"
            )
        line = raw[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        words = line.split()
        if not words or words[0] in ("ply", "comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            if len(words) < 2 or words[1] not in _PLY_FORMATS:
                raise PlyError(
                    f"{where}: unsupported PLY format line {line!r}; expected ascii or binary_*_endian"
                )
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise PlyError(
                    f"{where}: bad PLY header line {line!r}; expected 'element NAME COUNT'"
                )
            elements.append(_Element(words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise PlyError(f"{where}: PLY property {line!r} comes before any element")
            if len(words) == 5 and words[1] == "list":
                elements[-1].props.append((words[4], "list"))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1].props.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise PlyError(
                    f"{where}: bad PLY property line {line!r}; expected 'property TYPE NAME'"
                )
        else:
            raise PlyError(f"{where}: unexpected PLY header line {line!r}")
        if pos > 1 << 20:
            raise PlyError(f"{where}: the PLY header is over 1 MiB without 'end_header'")
    if fmt is None:
        raise PlyError(f"{where}: the PLY header has no 'format' line")
    return fmt, elements, pos


def _read_vertices(raw: bytes, where: str) -> dict[str, np.ndarray]:
    """The vertex element's properties as float64 columns."""
    fmt, elements, offset = _parse_header(raw, where)
    names = [e.name for e in elements]
    if "vertex" not in names:
        raise PlyError(
            f"{where}: the PLY file has no 'vertex' element (has {', '.join(names) or 'none'})"
        )
    vi = names.index("vertex")
    vertex = elements[vi]
    props = [p for p, _ in vertex.props]
    if len(set(props)) != len(props):
        raise PlyError(f"{where}: the PLY vertex element repeats a property name")
    if any(t == "list" for _, t in vertex.props):
        raise PlyError(
            f"{where}: the PLY vertex element has list properties; expected scalar properties only"
        )
    n = vertex.count
    if fmt == "ascii":
        lines = [
            ln for ln in raw[offset:].decode("ascii", errors="replace").splitlines() if ln.strip()
        ]
        skip = sum(e.count for e in elements[:vi])
        rows = lines[skip : skip + n]
        if len(rows) < n:
            raise PlyError(
                f"{where}: truncated ASCII PLY: the header declares {n} vertices, found {len(rows)} lines"
            )
        try:
            values = np.array(" ".join(rows).split(), dtype=np.float64)
        except ValueError:
            raise PlyError(f"{where}: the ASCII PLY vertex data has a non-numeric value") from None
        if values.size != n * len(props):
            raise PlyError(
                f"{where}: the ASCII PLY vertex data has {values.size} values, expected {n} x {len(props)} properties"
            )
        table = values.reshape(n, len(props))
        return {p: table[:, i] for i, p in enumerate(props)}
    endian = _PLY_FORMATS[fmt]
    for e in elements[:vi]:
        if any(t == "list" for _, t in e.props):
            raise PlyError(
                f"{where}: element '{e.name}' with list properties before 'vertex' is not supported"
            )
        offset += e.count * np.dtype([(p, endian + t) for p, t in e.props]).itemsize
    dtype = np.dtype([(p, endian + t) for p, t in vertex.props])
    need, have = n * dtype.itemsize, max(len(raw) - offset, 0)
    if have < need:
        raise PlyError(
            f"{where}: truncated PLY: the header declares {n} vertices ({need} bytes), only {have} bytes follow"
        )
    table = np.frombuffer(raw, dtype=dtype, count=n, offset=offset)
    return {p: table[p].astype(np.float64) for p in props}


def load_ply(path: str | os.PathLike, device: torch.device | str = "cpu") -> GaussianCloud:
    """Read an Inria 3DGS PLY (binary or ASCII, float or double). The SH degree follows from the
    number of ``f_rest`` fields. Files whose three scales are equal and whose rotations are the
    identity load as isotropic, others as anisotropic with ``quats``. Raises ``PlyError``."""
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise PlyError(f"{where}: no such file; expected {_EXPECTED}") from None
    except IsADirectoryError:
        raise PlyError(f"{where}: is a directory, expected a .ply file") from None
    except OSError as e:
        raise PlyError(f"{where}: cannot read the file ({e.strerror or e})") from None
    cols = _read_vertices(raw, where)

    have = set(cols)
    missing = [k for k in _CANONICAL if k not in have]
    # Lenient: a single scale_0 is isotropic, missing rotations are the identity.
    partial_scale = ("scale_1" in have) != ("scale_2" in have)
    partial_rot = 0 < sum(f"rot_{i}" in have for i in range(4)) < 4
    core = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0"]
    if any(k not in have for k in core) or partial_scale or partial_rot:
        found = ", ".join(list(cols)[:12]) + (", ..." if len(cols) > 12 else "")
        raise PlyError(
            f"{where}: not a Gaussian-splat PLY: missing {', '.join(missing)} (found {found}); expected {_EXPECTED}"
        )
    rest_ids = sorted(int(m.group(1)) for k in cols if (m := re.fullmatch(r"f_rest_(\d+)", k)))
    n_rest = len(rest_ids)
    degree = sh_degree_of(n_rest // 3) if n_rest % 3 == 0 else -1
    if degree < 0 or rest_ids != list(range(n_rest)):
        raise PlyError(
            f"{where}: has {n_rest} f_rest fields; expected f_rest_0..f_rest_(M-1) with M = 3·((d+1)²-1)"
            " = 0, 9, 24, 45, ... for SH degree d"
        )

    def stack(keys: list[str]) -> np.ndarray:
        if not keys:
            return np.zeros((len(cols["x"]), 0), np.float32)
        return np.stack([cols[k] for k in keys], axis=1).astype(np.float32)  # (N, len(keys))

    fields = {
        "means": stack(["x", "y", "z"]),
        "sh_dc": stack(["f_dc_0", "f_dc_1", "f_dc_2"]),
        "sh_rest": stack([f"f_rest_{i}" for i in range(n_rest)]),
        "opacity": stack(["opacity"]),
        "scales": stack(["scale_0", "scale_1", "scale_2"] if "scale_1" in have else ["scale_0"]),
    }
    if "rot_0" in have:
        fields["rotations"] = stack([f"rot_{i}" for i in range(4)])
    bad = [k for k, v in fields.items() if not np.isfinite(v).all()]
    if bad:
        raise PlyError(f"{where}: the PLY has NaN or infinite values in {', '.join(bad)}")
    n = fields["means"].shape[0]

    scales = fields["scales"]
    iso_scales = bool((scales == scales[:, :1]).all())
    quats = fields.get("rotations")
    if quats is not None:
        norm = np.linalg.norm(quats, axis=1)
        identity = bool((norm > 0).all() and (np.abs(quats[:, 1:]) <= 1e-6 * norm[:, None]).all())
    else:
        identity = True
    if iso_scales and identity:
        log_scales, quats = scales[:, :1], None
    else:
        log_scales = np.repeat(scales, 3, axis=1) if scales.shape[1] == 1 else scales
    sh_rest = fields["sh_rest"].reshape(n, 3, n_rest // 3).transpose(0, 2, 1)  # (N, K-1, 3)

    def tt(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return GaussianCloud(
        tt(fields["means"]),
        tt(log_scales),
        None if quats is None else tt(quats),
        tt(fields["opacity"][:, 0]),
        tt(fields["sh_dc"]),
        tt(sh_rest),
    )
