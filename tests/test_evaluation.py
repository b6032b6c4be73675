"""ayg.evaluation: the result records, the 48-prompt runner and the ablation runner (their
summaries checked against counts made by hand and against the committed result files)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from ayg.evaluation import ablations, records, toy48

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _rec(prompt: str, seed: int, motion_ok: bool, **metrics) -> dict:
    m = {"appearance_accuracy": 1.0, "motion_accuracy": float(motion_ok), **metrics}
    return records.make_record("toy48", m, prompt=prompt, seed=seed, preset="toy")


def test_the_48_moving_prompts():
    from ayg.toyworld.vocab import parse_prompt

    prompts = toy48.moving_prompts()
    parsed = [parse_prompt(p) for p in prompts]
    assert len(set(prompts)) == 48 and all(p.motion is not None for p in parsed)
    assert sum(p.held_out for p in parsed) == 12
    assert prompts[:3] == ["a red ball spinning", "a red ball swaying", "a red ball nodding"]
    assert toy48.split_prompts(" a red cube swaying, ,a blue ring nodding ") == [
        "a red cube swaying",
        "a blue ring nodding",
    ]


def test_records_follow_the_schema(tmp_path):
    r = records.make_record("ablation", {"drift": 0.5}, "a red cube spinning", 3, "toy", ["a=1"])
    assert list(r)[:7] == list(records.REQUIRED)
    assert r["overrides"] == ["a=1"] and r["commit"] is None
    with pytest.raises(records.RecordError, match="kind"):
        records.make_record("sweep", {})
    log = tmp_path / "runs.jsonl"
    records.append_record(log, r)
    records.append_record(log, records.make_record("toy48", {}, setting="x"))
    got = records.read_records([log])
    assert got[0] == r and got[1]["setting"] == "x"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(r) + "\n\n" + json.dumps({"kind": "toy48"}) + "\n")
    with pytest.raises(records.RecordError, match=r"bad.jsonl:3: missing prompt"):
        records.read_records([bad])
    bad.write_text("{not json\n")
    with pytest.raises(records.RecordError, match=r"bad.jsonl:1: not JSON"):
        records.read_records([bad])
    with pytest.raises(records.RecordError, match="cannot read"):
        records.read_records([tmp_path / "none.jsonl"])


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_commit_names_the_checkout_or_nothing(tmp_path):
    assert records.source_commit(tmp_path) is None  # not a git checkout
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "__init__.py").write_text("x = 1\n")
    assert records.source_commit(tmp_path) is None  # untracked: not the checkout's code
    subprocess.run([*git, "add", "__init__.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert records.source_commit(tmp_path) == head
    (tmp_path / "__init__.py").write_text("x = 2\n")
    assert records.source_commit(tmp_path) == head + "-dirty"


def test_summary_counts_by_seed_motion_and_shape():
    rs = [
        _rec("a red ball spinning", 0, False, drift=0.2),  # held out
        _rec("a red cube spinning", 0, True, drift=0.4),
        _rec("a red cube swaying", 0, True, drift=0.6),
        _rec("a red ball spinning", 1, True, drift=1.0),
        _rec("a blue cone nodding", 1, False, drift=0.0),  # held out
    ]
    s = toy48.summarize(rs)
    assert list(s["seeds"]) == ["0", "1"]
    s0, s1, all_ = s["seeds"]["0"], s["seeds"]["1"], s["all"]
    assert s0["runs"] == 3 and s0["motion_accuracy"] == pytest.approx(2 / 3)
    assert s0["held_out_runs"] == 1 and s0["held_out_motion_accuracy"] == 0.0
    assert s0["drift"] == pytest.approx(0.4)
    assert s0["motion_right"] == {"spinning": [1, 2], "swaying": [1, 1], "nodding": [0, 0]}
    assert s1["held_out_motion_accuracy"] == pytest.approx(0.5)
    assert all_["spins_right_by_shape"]["ball"] == [1, 2]
    assert all_["spins_right_by_shape"]["cube"] == [1, 1]
    assert all_["motion_accuracy"] == pytest.approx(3 / 5)
    text = toy48.format_summary(s)
    assert "seed 0" in text and "60.0 %" in text and "spinning balls" in text


def test_committed_toy48_records_give_the_documented_figures():
    # docs/RESULTS.md, toy evaluation: motion 81.2 / 87.5 / 75.0 / 85.4 %, 82.3 % over 192 runs
    rs = records.read_records([RESULTS / "toy48.jsonl"])
    assert {r["kind"] for r in rs} == {"toy48"} and {r["commit"] for r in rs} == {"680074a"}
    s = toy48.summarize(rs)
    motion = [round(100 * s["seeds"][k]["motion_accuracy"], 1) for k in ("0", "1", "2", "3")]
    assert motion == [81.2, 87.5, 75.0, 85.4]
    assert round(100 * s["all"]["motion_accuracy"], 1) == 82.3
    assert round(100 * s["all"]["held_out_motion_accuracy"], 1) == 77.1
    assert s["all"]["appearance_accuracy"] == 1.0
    assert s["all"]["spins_right_by_shape"] == {
        "ball": [0, 16],
        "cube": [11, 16],
        "cone": [9, 16],
        "ring": [15, 16],
    }


def test_committed_ablation_records_give_the_documented_table():
    rs = records.read_records([RESULTS / "ablations.jsonl"])
    rows = {r["row"]: r for r in ablations.table(rs)}
    assert len(rows) == len(ablations.ROWS) and all(r["runs"] == 5 for r in rows.values())
    assert rows["full AYG"]["motion_accuracy"] == pytest.approx(0.8)
    assert rows["w/o JSD regularizer"]["drift"] == pytest.approx(2.127, abs=5e-4)
    assert rows["SDS instead of CSD"]["motion_accuracy"] == pytest.approx(0.2)
    for r in rs:  # every record states the row's own overrides
        assert r["overrides"] == ["output.preview=false", *dict(ablations.ROWS)[r["setting"]]]


def test_committed_table_records_give_the_documented_rows_and_tests():
    # docs/RESULTS.md, "Table 2 on today's preset": 10 rows × 16 prompts × 2 seeds
    rs = records.read_records([RESULTS / "ablations_table.jsonl"])
    assert {r["commit"] for r in rs} == {"e7030c0", "7b49d60", "f2cdc91"}
    assert {r["seed"] for r in rs} == {0, 1}
    assert {r["prompt"] for r in rs} == set(ablations.TABLE_PROMPTS)
    rows = {r["row"]: r for r in ablations.table(rs)}
    assert list(rows) == [name for name, _ in ablations.ROWS[:2] + ablations.ROWS[3:11]]
    assert all(r["runs"] == 32 and r["vs_full"]["pairs"] == 32 for r in list(rows.values())[1:])
    assert rows["full AYG"]["runs"] == 32
    assert rows["full AYG"]["motion_accuracy"] == pytest.approx(0.75)
    ma = rows["w/o motion amplification"]
    assert ma["motion_accuracy"] == pytest.approx(14 / 32)
    assert ma["vs_full"]["motion_accuracy"]["full_only"] == 10
    assert ma["vs_full"]["motion_accuracy"]["row_only"] == 0
    assert ma["vs_full"]["motion_accuracy"]["mcnemar_p"] == pytest.approx(2 / 2**10)
    jsd = rows["w/o JSD regularizer"]["vs_full"]
    assert jsd["drift"]["mean_difference"] == pytest.approx(0.987, abs=5e-4)
    assert jsd["motion_accuracy"]["mcnemar_p"] == pytest.approx(0.25)
    sds = rows["SDS instead of CSD"]
    assert sds["motion_accuracy"] == pytest.approx(15 / 32)
    c = sds["vs_full"]["motion_accuracy"]
    assert (c["full_only"], c["row_only"]) == (10, 1)
    assert c["mcnemar_p"] == pytest.approx(2 * 12 / 2**11)  # P(X <= 1), X ~ Bin(11, 1/2), twice
    assert sds["vs_full"]["motion_amount"]["interval"][1] < 0
    static = rows["w/o dynamic cameras"]["vs_full"]["motion_accuracy"]
    assert (static["full_only"], static["row_only"]) == (1, 4)
    assert static["mcnemar_p"] == pytest.approx(2 * 6 / 2**5)
    assert rows["fps 4 only"]["vs_full"]["motion_amount"]["interval"][0] > 0
    fps12, neg = rows["fps 12 only"], rows["w/o negative prompt"]
    assert fps12["motion_accuracy"] == pytest.approx(16 / 32)
    c = fps12["vs_full"]["motion_accuracy"]
    assert (c["full_only"], c["row_only"]) == (8, 0)
    assert c["mcnemar_p"] == pytest.approx(2 / 2**8)
    assert neg["motion_accuracy"] == pytest.approx(17 / 32)
    c = neg["vs_full"]["motion_accuracy"]
    assert (c["full_only"], c["row_only"]) == (8, 1)
    assert c["mcnemar_p"] == pytest.approx(2 * 10 / 2**9)  # P(X <= 1), X ~ Bin(9, 1/2), twice
    assert neg["vs_full"]["motion_amount"]["interval"][1] < 0
    for r in rs:
        assert r["overrides"] == ["output.preview=false", *dict(ablations.ROWS)[r["setting"]]]


def test_results_md_holds_the_tables_the_committed_records_give():
    """docs/RESULTS.md's two tables of "Table 2 on today's preset" are what ``--markdown``
    prints from the committed records, character for character."""
    rs = records.read_records([RESULTS / "ablations_table.jsonl"])
    md = ablations.markdown_tables(ablations.table(rs))
    doc = (RESULTS.parent / "RESULTS.md").read_text()
    assert md in doc
    assert md.count("\n| ") == 10 + 9 + 1  # 10 rows, 9 of them against full AYG, 2nd header
    assert "| SDS instead of CSD | 10 / 1, p = 0.012 |" in md
    assert "| full AYG | 75.0 % [58, 87] | 100 % [89, 100] |" in md


def test_markdown_tables_format_a_hand_made_row():
    row = {
        "row": "x",
        "motion_accuracy": 0.5,
        "appearance_accuracy": 1.0,
        "drift": 0.1234,
        "motion_amount": 0.2,
        "motion_accuracy_interval": (0.301, 0.699),
        "appearance_accuracy_interval": (0.9, 1.0),
        "drift_interval": (0.05, 0.2),
        "motion_amount_interval": (0.1, 0.3),
        "vs_full": {
            "pairs": 4,
            "motion_accuracy": {"full_only": 3, "row_only": 0, "mcnemar_p": 0.25},
            "appearance_accuracy": {"full_only": 0, "row_only": 0, "mcnemar_p": 1.0},
            "drift": {"mean_difference": -0.004, "interval": (-0.03, 0.021)},
            "motion_amount": {"mean_difference": 0.5, "interval": (0.4, 0.6)},
        },
    }
    lines = ablations.markdown_tables([row]).splitlines()
    assert (
        lines[2]
        == "| x | 50.0 % [30, 70] | 100 % [90, 100] | 0.123 [0.05, 0.20] | 0.200 [0.10, 0.30] |"
    )
    assert lines[-1] == (
        "| x | 3 / 0, p = 0.25 | 0 / 0, p = 1 | −0.00 [−0.03, +0.02] | +0.50 [+0.40, +0.60] |"
    )


def test_ablation_jobs_put_the_rows_overrides_last(tmp_path):
    jobs = ablations.ablation_jobs(
        ["a red cube spinning", "a blue cone nodding"],
        [0, 10],
        tmp_path,
        seeds=[2],
        overrides=["x=1"],
    )
    assert [(j.setting, j.prompt) for j in jobs] == [
        ("full AYG", "a red cube spinning"),
        ("full AYG", "a blue cone nodding"),
        ("w/o negative prompt", "a red cube spinning"),
        ("w/o negative prompt", "a blue cone nodding"),
    ]
    assert jobs[2].overrides == ("x=1", "stage2.omega_neg=0") and jobs[2].seed == 2
    assert jobs[3].out == str(tmp_path / "row10" / "s2" / "p01") and jobs[3].kind == "ablation"
    two = ablations.ablation_jobs(["a red cube spinning"], [0], tmp_path, seeds=[0, 1])
    assert [(j.seed, j.out) for j in two] == [
        (0, str(tmp_path / "row00" / "s0" / "p00")),
        (1, str(tmp_path / "row00" / "s1" / "p00")),
    ]


def test_table_prompts_cover_every_shape_motion_and_held_out_pairs():
    from ayg.toyworld.vocab import SHAPES, parse_prompt

    toy = [parse_prompt(p) for p in ablations.TABLE_PROMPTS]
    assert len(toy) == 16 and len(set(ablations.TABLE_PROMPTS)) == 16
    assert all(sum(t.shape == s for t in toy) == 4 for s in SHAPES)
    assert {t.motion for t in toy} == {"spinning", "swaying", "nodding"}
    assert sum(t.held_out for t in toy) >= 4


def test_ablation_table_pairs_each_row_with_full_ayg():
    """Hand-computed: 4 prompt-seed pairs; the row loses motion on two of them and gains it on
    none (McNemar p = 2 · ½² = 0.5), and drifts 0.2 more on every pair."""

    def rec(setting, prompt, seed, motion, drift):
        return records.make_record(
            "ablation",
            {"motion_accuracy": motion, "appearance_accuracy": 1.0, "drift": drift,
             "motion_amount": 0.1},
            prompt, seed, "toy", [], setting=setting,
        )  # fmt: skip

    keys = [("a red cube spinning", 0), ("a red cube spinning", 1), ("a blue cone nodding", 0),
            ("a blue cone nodding", 1)]  # fmt: skip
    full = [rec("full AYG", p, s, 1.0, 0.3) for p, s in keys]
    row = [rec("w/o JSD regularizer", p, s, float(i >= 2), 0.5) for i, (p, s) in enumerate(keys)]
    extra = [rec("w/o JSD regularizer", "a green ring nodding", 0, 1.0, 9.0)]  # no full pair
    rows = {r["row"]: r for r in ablations.table(full + row + extra)}
    vs = rows["w/o JSD regularizer"]["vs_full"]
    assert vs["pairs"] == 4
    assert vs["motion_accuracy"] == {"full_only": 2, "row_only": 0, "mcnemar_p": 0.5}
    assert vs["appearance_accuracy"]["mcnemar_p"] == 1.0
    assert vs["drift"]["mean_difference"] == pytest.approx(0.2)
    assert vs["drift"]["interval"] == pytest.approx((0.2, 0.2))  # no spread
    lo, hi = rows["full AYG"]["motion_accuracy_interval"]
    assert (lo, hi) == pytest.approx(records_wilson(4, 4))
    assert "vs_full" not in rows["full AYG"]
    text = ablations.format_table(list(rows.values()), ["x"])
    assert "motion 2/0 p=0.500" in text and "drift +0.200 [+0.200, +0.200]" in text


def records_wilson(k, n):
    from ayg.evaluation.stats import wilson_interval

    return wilson_interval(k, n)


def test_run_jobs_appends_records_and_skips_recorded_runs(tmp_path, monkeypatch):
    ran = []

    def fake_run_job(job):
        ran.append(job.prompt)
        return records.make_record(
            job.kind, {"motion_accuracy": 1.0}, job.prompt, job.seed, "toy", job.overrides
        )

    monkeypatch.setattr(toy48, "run_job", fake_run_job)
    log = tmp_path / "runs.jsonl"
    jobs = [toy48.RunJob(p, str(tmp_path / str(i))) for i, p in enumerate(["a", "b"])]
    assert [r["prompt"] for r in toy48.run_jobs(jobs[:1], log)] == ["a"]
    got = toy48.run_jobs(jobs, log)  # "a" is recorded already
    assert ran == ["a", "b"] and [r["prompt"] for r in got] == ["a", "b"]
    assert len(records.read_records([log])) == 2
    other_seed = toy48.RunJob("a", str(tmp_path / "2"), seed=1)
    toy48.run_jobs([other_seed], log)
    assert ran == ["a", "b", "a"]


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--prompts", "a purple ball spinning"], "no known colour"),
        (["--set", "stage2.nope=1"], "unknown config field"),
        (["--workers", "0"], "--workers"),
        (["--summarize", "none.jsonl"], "cannot read"),
    ],
)
def test_bad_toy48_command_lines_end_in_one_line(tmp_path, capsys, argv, says):
    with pytest.raises(SystemExit) as e:
        toy48.main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and says in err[-1]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--rows", "3,99"], "--rows"),
        (["--rows", "x"], "--rows"),
        (["--seeds", "0,x"], "--seeds"),
        (["--seeds", "-1"], "--seeds"),
        (["--markdown"], "--markdown prints the tables of finished runs"),
    ],
)
def test_bad_ablation_rows_end_in_one_line(tmp_path, capsys, argv, says):
    with pytest.raises(SystemExit) as e:
        ablations.main([*argv, "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and says in capsys.readouterr().err.strip().splitlines()[-1]


def test_run_job_generates_with_its_settings_and_scores_the_asset(tmp_path, monkeypatch):
    # generate is replaced by a still cloud (a real run takes minutes); the evaluation is real
    import torch

    from ayg.asset import Asset
    from ayg.gaussians import GaussianCloud
    from ayg.teachers.toy import toy_weights_available

    if not toy_weights_available():
        pytest.skip("toy weights not built")
    seen = {}

    def fake_generate(prompt, out, cfg, resume=False, progress=True):
        seen.update(prompt=prompt, out=out, cfg=cfg, resume=resume)
        g = torch.Generator().manual_seed(0)
        return Asset.from_cloud(GaussianCloud.init_sphere(200, radius=0.4, generator=g))

    monkeypatch.setattr("ayg.pipeline.generate", fake_generate)
    sets = ("stage2.omega_ma=3", "output.preview=false")
    job = toy48.RunJob("a blue cone nodding", str(tmp_path / "run"), "cpu", 5, sets)
    rec = toy48.run_job(job)
    cfg = seen["cfg"]
    assert (seen["prompt"], seen["out"], seen["resume"]) == (job.prompt, tmp_path / "run", False)
    assert (cfg.device, cfg.seed, cfg.stage2.omega_ma, cfg.output.preview) == ("cpu", 5, 3.0, False)
    assert records.check_record(rec) is rec
    assert (rec["kind"], rec["prompt"], rec["seed"], rec["preset"]) == (
        "toy48",
        "a blue cone nodding",
        5,
        "toy",
    )
    assert rec["overrides"] == list(sets) and rec["held_out"] is True and rec["device"] == "cpu"
    assert set(rec["metrics"]) == set(toy48.METRICS)
    assert rec["metrics"]["motion_amount"] == 0.0  # a cloud without motion
    assert rec["metrics"]["motion_accuracy"] in (0.0, 1.0)


def test_pool_workers_are_spread_over_the_visible_gpus(monkeypatch):
    import multiprocessing as mp

    import torch

    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # leave the test process be
    counter = mp.get_context("spawn").Value("i", 0)
    for _ in range(7):
        toy48._worker_init(counter)
    assert calls == [0, 1, 2, 0, 1, 2, 0]  # worker k on GPU k mod 3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    toy48._worker_init(counter)
    toy48._worker_init()  # CPU jobs: no counter, no GPU
    assert calls == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize("device,counted", [("cuda", True), ("cpu", False)])
def test_run_jobs_hands_worker_numbers_out_for_gpu_jobs_only(
    monkeypatch, tmp_path, device, counted
):
    seen = {}

    class FakePool:
        def __init__(self, workers, initializer, initargs):
            seen.update(workers=workers, initializer=initializer, initargs=initargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def imap_unordered(self, fn, jobs):
            return iter(())

    context = SimpleNamespace(Value=lambda code, value: ("counter", code, value), Pool=FakePool)
    monkeypatch.setattr(toy48.mp, "get_context", lambda method: context)
    jobs = [toy48.RunJob("a red cube spinning", str(tmp_path / "a"), device=device)]
    assert toy48.run_jobs(jobs, tmp_path / "runs.jsonl", workers=4) == []
    assert seen["workers"] == 4 and seen["initializer"] is toy48._worker_init
    assert seen["initargs"] == ((("counter", "i", 0),) if counted else ())
