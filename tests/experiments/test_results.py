"""Result files: atomic writes, resumable sweeps, run metadata."""

import importlib.metadata
import json
import os
import platform
import subprocess

import jax
import pytest

from experiments import registry, results


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    results.write_json(path, {"v": 1})

    def boom(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        results.write_json(path, {"v": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["a.json"]  # no temporary file left behind


def test_json_rejects_nan_and_converts_numpy(tmp_path):
    import numpy as np
    results.write_json(tmp_path / "ok.json", {"a": np.float32(1.5), "b": np.arange(3), "c": (1, 2)})
    assert json.loads((tmp_path / "ok.json").read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": [1, 2]}
    with pytest.raises(ValueError, match="non-finite value nan"):
        results.write_json(tmp_path / "bad.json", {"a": float("nan")})


def test_csv_roundtrip_and_unknown_column(tmp_path):
    rows = [{"fmt": "mxfp4", "loss": 1.25}, {"fmt": "fp32", "loss": 1.0, "note": "x,y"}]
    results.write_csv(tmp_path / "t.csv", rows)
    assert results.read_csv(tmp_path / "t.csv") == [
        {"fmt": "mxfp4", "loss": "1.25", "note": ""}, {"fmt": "fp32", "loss": "1.0", "note": "x,y"}]
    with pytest.raises(ValueError, match=r"columns \['note'\] not among"):
        results.write_csv(tmp_path / "u.csv", rows, ["fmt", "loss"])


def test_results_dir_refuses_paths_outside(tmp_path):
    rd = results.ResultsDir(tmp_path / "r")
    with pytest.raises(ValueError, match="leaves the results folder"):
        rd.file("../escape.txt")


def test_sweep_resumes_after_interruption(dummy, tmp_path):
    out = tmp_path / "run"
    full = registry.make_config("dummy", overrides={"n": "10", "chunk": "3"})
    # Interrupted while computing the 8th item: chunks [0,1,2] and [3,4,5] are saved, [6,7,8] is lost.
    interrupted = dummy.Config(n=10, chunk=3, interrupt_after=7)
    with pytest.raises(KeyboardInterrupt):
        registry.run_experiment("dummy", interrupted, out=out)
    saved = [json.loads(line) for line in (out / "squares.jsonl").read_text().splitlines()]
    assert [r["i"] for r in saved] == [0, 1, 2, 3, 4, 5]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["status"] == "interrupted" and not (out / "summary.json").exists()

    # Same folder, same config except the interruption: only the unsaved items are computed.
    os.replace(out / "config.json", out / "config.old")
    results.write_json(out / "config.json", full)
    dummy.CALLS.clear()
    _, headline = registry.run_experiment("dummy", full, out=out)
    assert dummy.CALLS == [6, 7, 8, 9]
    assert headline == {"total": sum(i * i for i in range(10)), "n": 10}
    assert [r["value"] for r in results.read_csv(out / "squares.csv")] == [str(float(i * i)) for i in range(10)]
    assert json.loads((out / "metadata.json").read_text())["resumed"] is True

    dummy.CALLS.clear()  # a finished sweep recomputes nothing
    registry.run_experiment("dummy", full, out=out)
    assert dummy.CALLS == []


def test_sweep_errors(tmp_path):
    with pytest.raises(ValueError, match="duplicate item keys"):
        results.sweep(tmp_path / "a.jsonl", [1, 1], lambda xs: [{} for _ in xs])
    with pytest.raises(ValueError, match="returned 0 rows for 1 items"):
        results.sweep(tmp_path / "b.jsonl", [1], lambda xs: [])
    results.sweep(tmp_path / "c.jsonl", [1, 2], lambda xs: [{"x": x} for x in xs])
    with pytest.raises(ValueError, match="not items of this sweep"):
        results.sweep(tmp_path / "c.jsonl", [3], lambda xs: [{"x": x} for x in xs])
    (tmp_path / "d.jsonl").write_text('{"key": "1"}\n{broken\n')
    with pytest.raises(ValueError, match="d.jsonl:2: malformed sweep line"):
        results.sweep(tmp_path / "d.jsonl", [1], lambda xs: [{} for _ in xs])


def test_run_writes_config_metadata_and_summaries(dummy, tmp_path):
    config = dummy.Config(n=3)
    rd, headline = registry.run_experiment("dummy", config, results_root=tmp_path)
    assert rd.path.parent == tmp_path / "dummy"
    assert sorted(p.name for p in rd.path.iterdir()) == [
        "config.json", "metadata.json", "squares.csv", "squares.jsonl", "summary.json", "summary.md"]
    assert json.loads((rd.path / "config.json").read_text())["sizes"] == [1, 2]
    assert json.loads((rd.path / "summary.json").read_text()) == headline == {"total": 5.0, "n": 3}
    assert "| total | 5.0 |" in (rd.path / "summary.md").read_text()

    meta = json.loads((rd.path / "metadata.json").read_text())
    assert meta["status"] == "complete" and meta["experiment"] == "dummy"
    assert meta["python"] == platform.python_version()
    assert meta["backend"] == jax.default_backend() == "cpu"
    assert meta["device_count"] == jax.device_count() == 8
    assert meta["device_kind"] == jax.devices()[0].device_kind
    assert meta["packages"]["jax"] == importlib.metadata.version("jax") == jax.__version__
    assert meta["packages"]["optax"] == importlib.metadata.version("optax")
    assert meta["cpu_model"] and meta["cpu_count"] == os.cpu_count()
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(results.__file__)).stdout.strip()
    assert meta["git_sha"].removesuffix("-dirty") == head
    assert 0 < meta["wall_time_s"] < 60

    # a second run in the same second gets its own folder
    rd2, _ = registry.run_experiment("dummy", config, results_root=tmp_path)
    assert rd2.path != rd.path
