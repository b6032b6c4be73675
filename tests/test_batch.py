"""``ayg batch`` on a short-lived local Ray cluster (2 CPUs) with the ``tiny`` preset: four jobs on
two workers, a bad prompt recorded as failed, a re-run that does no work, a worker killed with
SIGKILL mid-job that Ray reruns and that resumes to the same bytes, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ayg.batch import read_spec, run_batch, run_name
from ayg.cli import main
from ayg.config import BatchConfig

ray = pytest.importorskip("ray")  # the optional batch extra

# the kill callback below runs in Ray workers, which cannot import this test module
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SPEC = [
    "a red cube swaying",
    "a blue cone nodding",
    '{"prompt": "a yellow ball", "seed": 2}',
    json.dumps(
        {
            "prompt": "a green ring spinning",
            "extend": ["a green ring swaying"],
            "export": ["tracks", {"format": "ply-frames", "frames": 3}],
        }
    ),
]
NAMES = [
    "a-red-cube-swaying-s0",
    "a-blue-cone-nodding-s0",
    "a-yellow-ball-s2",
    "a-green-ring-spinning-s0",
]
KILLED = "a-green-ring-spinning-s0"  # the job whose worker is killed


def write_spec(path: Path, lines: list[str]) -> Path:
    path.write_text("# tiny batch\n\n" + "\n".join(lines) + "\n")
    return path


def manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def jobs_of(spec: Path):
    return read_spec(spec, "tiny")


def options(**kw) -> BatchConfig:
    return BatchConfig(workers=2, progress=False, **kw)


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for the module: 2 CPUs, no GPU, no dashboard; stopped at the end. Ray's
    memory monitor is off: on a shared machine it kills tasks for other processes' memory,
    which would add retries the assertions below do not expect."""
    saved = os.environ.get("RAY_memory_monitor_refresh_ms")
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"  # read by the raylet ray.init starts
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=80 * 2**20,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_memory_monitor_refresh_ms", None)
    else:
        os.environ["RAY_memory_monitor_refresh_ms"] = saved


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """The uninterrupted batch: 4 jobs on 2 workers, with --eval."""
    tmp = tmp_path_factory.mktemp("batch")
    spec = write_spec(tmp / "spec.txt", SPEC)
    root = tmp / "ref"
    summary = run_batch(jobs_of(spec), root, options(evaluate=True))
    return spec, root, summary


@pytest.mark.slow
def test_four_jobs_on_two_workers(reference):
    spec, root, summary = reference
    assert summary["done"] == 4 and summary["failed"] == 0 and summary["ran"] == 4
    records = manifest(root)
    assert [r["name"] for r in records] == NAMES
    assert [r["line"] for r in records] == [3, 4, 5, 6]  # after the comment and the blank line
    pids = set()
    for r in records:
        assert r["status"] == "done" and r["error"] is None and r["attempts"] == 1, r
        assert r["device"] == "cpu" and r["wall_s"] > 0
        assert set(r["metrics"]) >= {"motion_amount", "drift", "appearance_accuracy"}
        run = root / r["name"]
        for rel in ("asset", "preview", "metrics", "log"):
            assert (root / r["outputs"][rel]).exists(), rel
        assert not (run / "checkpoint.pt").exists()
        log = (run / "job.log").read_text()
        assert "done in" in log
        pids.update(
            line.split(" pid ")[1].split()[0] for line in log.splitlines() if " pid " in line
        )
        saved = json.loads((run / "config.json").read_text())
        assert saved["config"]["preset"] == "tiny" and saved["job"]["prompt"] == r["prompt"]
    assert len(pids) >= 2, pids  # the four jobs ran in (at least) two worker processes
    assert json.loads((root / NAMES[2] / "config.json").read_text())["config"]["seed"] == 2
    ring = records[3]
    assert ring["outputs"]["final"] == f"{KILLED}/extend-1/asset.ayg"
    tracks = np.load(root / ring["outputs"]["exports"]["tracks"])
    assert tracks["positions"].shape[0] == 16 and tracks["uv"].shape[0] == 4
    frames = sorted((root / ring["outputs"]["exports"]["ply-frames"]).glob("*.ply"))
    assert [p.name for p in frames] == ["frame_0000.ply", "frame_0001.ply", "frame_0002.ply"]
    from ayg.asset import Asset

    extended = Asset.load(root / ring["outputs"]["final"])
    assert extended.prompts == ["a green ring spinning", "a green ring swaying"]
    np.testing.assert_allclose(tracks["times"][-1], extended.duration, rtol=1e-6)


@pytest.mark.slow
def test_rerun_does_no_work(reference, capsys):
    spec, root, _ = reference
    before = manifest(root)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    mtimes.pop(root / "manifest.jsonl")
    argv = ["batch", str(spec), "--out", str(root), "--preset", "tiny", "--workers", "2"]
    assert main([*argv, "--eval", "--no-progress"]) == 0
    assert "4 done, 0 failed of 4 jobs (0 run now)" in capsys.readouterr().out
    assert manifest(root) == before  # wall times, devices and metrics of the first run kept
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


@pytest.mark.slow
def test_killed_worker_is_retried_and_resumes(reference, tmp_path):
    """SIGKILL of the worker in stage 2 of one job (after a checkpoint): Ray reruns the task,
    the rerun continues from the checkpoint, and every output equals the uninterrupted run's
    byte for byte."""
    spec, ref_root, _ = reference
    marker, trace = tmp_path / "killed-once", tmp_path / "trace.txt"

    def kill_once(name: str, phase: str, step: int) -> None:
        if name != KILLED:
            return
        with open(trace, "a") as f:
            f.write(f"{os.getpid()} {phase} {step}\n")
        if phase == "stage2" and step == 2 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    root = tmp_path / "run"
    summary = run_batch(jobs_of(spec), root, options(), callback=kill_once)
    assert marker.exists()
    assert summary["done"] == 4 and summary["failed"] == 0
    rec = {r["name"]: r for r in manifest(root)}
    assert rec[KILLED]["attempts"] == 2 and rec[KILLED]["status"] == "done"
    assert all(rec[n]["attempts"] == 1 for n in NAMES if n != KILLED)
    steps = [line.split() for line in trace.read_text().splitlines()]
    first, second = steps[0][0], steps[-1][0]
    assert first != second  # a new worker process
    rerun = [(phase, int(step)) for pid, phase, step in steps if pid == second]
    assert rerun[0] == ("stage2", 3)  # no stage 1, stage 2 from its step-2 checkpoint
    log = (root / KILLED / "job.log").read_text()
    assert log.count(" start: ") == 2 and "generate: resuming" in log
    ref_files = sorted(
        p.relative_to(ref_root)
        for p in ref_root.rglob("*")
        if p.is_file() and p.suffix in (".ayg", ".npz", ".ply", ".mp4")
    )
    assert len(ref_files) == 4 * 3 + 2 + 1 + 3  # asset, stage1, preview; extension; exports
    for rel in ref_files:
        assert (root / rel).read_bytes() == (ref_root / rel).read_bytes(), rel


@pytest.mark.slow
def test_bad_prompt_fails_alone_on_an_existing_cluster(cluster, tmp_path):
    """``ayg batch --ray-address`` from another process: the bad prompt's job is recorded as
    failed with its one line, the other finishes, the exit code is 1; running the same command
    again retries only the failed job."""
    spec = write_spec(tmp_path / "spec.txt", ["a purple pyramid", "a red ball"])
    root = tmp_path / "out"
    address = ray.get_runtime_context().gcs_address
    cmd = [
        sys.executable, "-m", "ayg.cli", "batch", str(spec), "--out", str(root),
        "--preset", "tiny", "--ray-address", address, "--workers", "2", "--no-progress",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    records = {r["name"]: r for r in manifest(root)}
    bad, good = records["a-purple-pyramid-s0"], records["a-red-ball-s0"]
    assert good["status"] == "done" and (root / good["outputs"]["asset"]).exists()
    assert bad["status"] == "failed" and "\n" not in bad["error"]
    assert bad["error"].startswith("the toy world does not know 'purple', 'pyramid' in prompt")
    assert f"failed a-purple-pyramid-s0: {bad['error']}" in res.stdout
    assert "batch: 1 done, 1 failed of 2 jobs (2 run now)" in res.stdout
    assert "Traceback" in (root / "a-purple-pyramid-s0" / "job.log").read_text()
    assert not (root / "a-purple-pyramid-s0" / "asset.ayg").exists()
    summary = run_batch(jobs_of(spec), root, options())
    assert summary["ran"] == 1 and summary["failed"] == 1


def test_without_ray_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    spec = write_spec(tmp_path / "spec.txt", ["a red ball"])
    assert main(["batch", str(spec), "--out", str(tmp_path / "o"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['ayg: error: ayg batch needs Ray; install it with: pip install "ayg[batch]"']
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "lines,extra,needle",
    [
        (['{"prompt": "a red ball",'], [], "spec.txt:3: not valid JSON"),
        (['{"prompt": "a red ball", "colour": 1}'], [], "unknown key 'colour'"),
        (['{"seed": 1}'], [], 'needs a "prompt" string'),
        (['{"prompt": "a red ball", "seed": "1"}'], [], '"seed" takes an integer'),
        (['{"prompt": "a red ball", "preset": "huge"}'], [], "unknown preset 'huge'"),
        (['{"prompt": "a red ball", "set": {"stage9.x": 1}}'], [], "unknown config field"),
        (['{"prompt": "a red ball", "export": ["gif"]}'], [], "format must be one of"),
        (['{"prompt": "a red ball", "export": ["tracks", "tracks"]}'], [], "'tracks' twice"),
        (['{"prompt": "a red ball", "extend": "a red ball spinning"}'], [], '"extend" takes'),
        (['{"prompt": "a red ball", "name": "../x"}'], [], '"name" takes'),
        (["a red ball", "A red ball!"], [], "spec.txt:4: its run directory 'a-red-ball-s0'"),
        (["# only a comment"], [], "holds no job"),
        (["a red ball"], ["--seeds", "1,x"], "--seeds takes integers"),
        (["a red ball"], ["--set", "nope"], "must look like section.field=value"),
        (["a red ball"], ["--workers", "0"], "--workers must be >= 1"),
        (["a red ball"], ["--gpus-per-job", "1.5"], "--gpus-per-job must be in (0, 1]"),
        (["a red ball"], ["--workers", "2", "--gpus-per-job", "0.5"], "not both"),
        (["a red ball"], ["--retries", "-1"], "--retries must be >= 0"),
    ],
)
def test_bad_input_one_line(tmp_path, capsys, lines, extra, needle):
    spec = write_spec(tmp_path / "spec.txt", lines)
    out = tmp_path / "o"
    argv = ["batch", str(spec), "--out", str(out), "--preset", "tiny", *extra]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("ayg: error:") and needle in err[0], err
    assert not out.exists()  # nothing written before the input is known good


def test_missing_spec_and_gpus_without_gpu(cluster, tmp_path, capsys):
    assert main(["batch", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "spec file" in capsys.readouterr().err
    spec = write_spec(tmp_path / "spec.txt", ["a red ball"])
    argv = ["batch", str(spec), "--out", str(tmp_path / "o"), "--preset", "tiny"]
    assert main([*argv, "--gpus-per-job", "0.5", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Ray sees none; use --workers N" in err[0], err


def test_run_names_are_stable_and_distinct():
    assert run_name("A red cube, swaying!", 3) == "a-red-cube-swaying-s3"
    assert run_name("a red cube swaying", 3) == run_name("a red cube swaying", 3)
    assert run_name("une théière qui danse", 0) == "une-theiere-qui-danse-s0"
    long_a, long_b = "a " + "very " * 20 + "red cube", "a " + "very " * 20 + "blue cube"
    a, b = run_name(long_a, 0), run_name(long_b, 0)
    assert a != b and len(a) <= 64 and a.startswith("a-very-very")
    assert run_name("ドラゴン", 1).startswith("prompt-") and run_name("ドラゴン", 1).endswith("-s1")
    assert run_name("ドラゴン", 1) != run_name("猫", 1)


def test_seeds_expand_lines_without_a_seed(tmp_path):
    from ayg.batch import parse_seeds

    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    spec = write_spec(
        tmp_path / "s.txt", ["a red ball", '{"prompt": "a red cube", "seed": 5, "name": "cube"}']
    )
    jobs = read_spec(spec, "tiny", parse_seeds("0,1"), ["stage2.steps=3"])
    assert [(j.name, j.seed) for j in jobs] == [
        ("a-red-ball-s0", 0),
        ("a-red-ball-s1", 1),
        ("cube", 5),
    ]
    assert jobs[0].config().stage2.steps == 3 and jobs[2].config().seed == 5


class FakeRay:
    """The two cluster queries ``placement`` makes, for clusters this machine does not have."""

    def __init__(self, nodes: list[dict[str, float]]):
        self._nodes = nodes

    def nodes(self):
        return [{"Alive": True, "Resources": r} for r in self._nodes]

    def cluster_resources(self):
        total: dict[str, float] = {}
        for r in self._nodes:
            for k, v in r.items():
                total[k] = total.get(k, 0) + v
        return total


def test_placement_gpu_shares_cpu_workers_and_limits():
    from ayg.batch import Placement, placement

    gpus = FakeRay([{"CPU": 16, "GPU": 1}, {"CPU": 16, "GPU": 1}])
    assert placement(gpus, BatchConfig()) == Placement(True, 1.0, 1, None)
    assert placement(gpus, BatchConfig(gpus_per_job=0.25)) == Placement(True, 0.25, 1, None)
    # --workers forces CPU jobs, the cluster's CPUs split between them
    assert placement(gpus, BatchConfig(workers=4)) == Placement(False, 0, 8, 4)
    cpus = FakeRay([{"CPU": 2}])
    assert placement(cpus, BatchConfig()) == Placement(False, 0, 2, 1)
    assert placement(cpus, BatchConfig(workers=2)) == Placement(False, 0, 1, 2)
    with pytest.raises(ValueError, match="Ray sees none"):
        placement(cpus, BatchConfig(gpus_per_job=0.5))
    with pytest.raises(ValueError, match="largest Ray node has 16"):
        placement(gpus, BatchConfig(cpus_per_job=20))


def test_gpu_job_without_cuda_fails_in_one_line(tmp_path):
    import torch

    from ayg.batch import run_job

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    job = read_spec(write_spec(tmp_path / "s.txt", ["a red ball"]), "tiny")[0]
    result = run_job(job, str(tmp_path / "out"), gpu=True)
    assert result["status"] == "failed" and result["device"] == "gpu"
    assert result["error"] == "this job was given a GPU but CUDA is not available in its worker"
    assert "Traceback" in (tmp_path / "out" / "a-red-ball-s0" / "job.log").read_text()
