"""Result records of the evaluation runners: one JSON object per run (one line of a ``.jsonl``),
the schema of ``docs/results/README.md``.

Every record has

    kind       "toy48" | "ablation" | "teacher_check" |    what produced it
               "keeps3d"
    prompt     str | null                                  the prompt of the run (null: none)
    seed       int | null                                  the run's seed
    preset     str | null                                  the preset the config started from
    overrides  [str]                                       the ``--set`` overrides on top of it
    commit     str | null                                  the source commit (short hash,
                                                           "-dirty" with local changes; null
                                                           when not run from a git checkout)
    metrics    {name: value}                               what the run measured

and a kind may add its own keys next to them (``setting`` for an ablation row, ``held_out``,
``seconds``, ``device``, ``version``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

KINDS = ("toy48", "ablation", "teacher_check", "keeps3d")
REQUIRED = ("kind", "prompt", "seed", "preset", "overrides", "commit", "metrics")


class RecordError(ValueError):
    """A results file that does not follow the record schema (the message is one line)."""


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        res = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def source_commit(package_dir: str | os.PathLike | None = None) -> str | None:
    """The short commit of the source in ``package_dir`` (default: the running ``ayg``
    package), with "-dirty" when tracked files differ from it; None unless the directory's
    ``__init__.py`` is a tracked file of a git checkout (an installed wheel is not), so a
    record never names a commit its code did not come from."""
    here = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parents[1]
    if _git(["ls-files", "--error-unmatch", "__init__.py"], here) is None:
        return None
    commit = _git(["rev-parse", "--short=7", "HEAD"], here)
    if commit is None:
        return None
    dirty = _git(["status", "--porcelain", "--untracked-files=no"], here)
    return commit + ("-dirty" if dirty else "")


def make_record(
    kind: str,
    metrics: dict[str, Any],
    prompt: str | None = None,
    seed: int | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    commit: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One record; ``extra`` keys follow the required ones."""
    if kind not in KINDS:
        raise RecordError(f"record kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return {
        "kind": kind,
        "prompt": prompt,
        "seed": seed,
        "preset": preset,
        "overrides": list(overrides),
        "commit": commit,
        "metrics": dict(metrics),
        **extra,
    }


def check_record(record: Any, where: str = "record") -> dict[str, Any]:
    """``record`` if it follows the schema, else ``RecordError`` naming what is wrong."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise RecordError(f"{where}: missing {', '.join(missing)}; a record needs {REQUIRED}")
    if record["kind"] not in KINDS:
        raise RecordError(
            f"{where}: kind must be one of {', '.join(KINDS)}, got {record['kind']!r}"
        )
    if not isinstance(record["overrides"], list) or not all(
        isinstance(o, str) for o in record["overrides"]
    ):
        raise RecordError(f"{where}: overrides must be a list of strings")
    if not isinstance(record["metrics"], dict):
        raise RecordError(f"{where}: metrics must be an object")
    return record


def read_records(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Every record of the given ``.jsonl`` files, in order; blank lines are skipped."""
    records = []
    for path in paths:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as e:
            raise RecordError(f"{path}: cannot read ({e.strerror or e})") from None
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{i}: not JSON ({e.msg})") from None
            records.append(check_record(obj, f"{path}:{i}"))
    return records


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as a line and flush it to disk, so an interrupted runner keeps every
    run it finished (a line is written whole or, on a crash mid-write, cut short and then
    reported by ``read_records``)."""
    line = json.dumps(check_record(record)) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
