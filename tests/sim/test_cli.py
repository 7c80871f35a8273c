"""``htex-ref sim`` / ``python -m simcluster`` on the smoke scenario: the report, byte-for-byte
reproducibility across processes (whatever the hash seed), and clear errors for bad scenarios."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.sim.helpers import SMOKE, read_csv

FILES = ["runs.csv", "comparison.png"] + [f"{label}/{name}" for label in ("simple", "auto")
                                          for name in ("tasks.csv", "blocks.csv", "timeline.csv", "jobs.csv",
                                                       "timeline.png")]


def sim(*args: str, hash_seed: str = "0", env_extra: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "htex_ref.cli", "sim", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_smoke_report_is_complete_and_identical_across_processes(tmp_path: Path) -> None:
    a = sim(str(SMOKE), "-o", str(tmp_path / "a"), "-q", hash_seed="1")
    assert a.returncode == 0, a.stderr
    assert a.stderr == ""  # quiet: no progress bar, no summary
    b = sim(str(SMOKE), "-o", str(tmp_path / "b"), hash_seed="2")
    assert b.returncode == 0, b.stderr
    assert "simple: makespan" in b.stderr and "report in" in b.stderr
    assert "\r" not in b.stderr  # not a terminal: no progress bar
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    runs = read_csv(tmp_path / "a" / "runs.csv")
    assert [r["label"] for r in runs] == ["simple", "auto"]
    tasks = read_csv(tmp_path / "a" / "simple" / "tasks.csv")
    assert len(tasks) == int(runs[0]["tasks"]) == 600
    assert {t["state"] for t in tasks} == {"done"}
    blocks = read_csv(tmp_path / "a" / "simple" / "blocks.csv")
    assert len(blocks) == int(runs[0]["blocks_submitted"])
    assert (tmp_path / "a" / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_other_seed_other_output(tmp_path: Path) -> None:
    a = sim(str(SMOKE), "-o", str(tmp_path / "a"), "-q", "--no-plots", "--only", "auto")
    b = sim(str(SMOKE), "-o", str(tmp_path / "b"), "-q", "--no-plots", "--only", "auto", "--seed", "8")
    assert a.returncode == b.returncode == 0
    assert not (tmp_path / "a" / "simple").exists() and not (tmp_path / "a" / "comparison.png").exists()
    assert (tmp_path / "a" / "auto" / "tasks.csv").read_bytes() != (tmp_path / "b" / "auto" / "tasks.csv").read_bytes()


def test_bad_scenario_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SMOKE.read_text().replace("max_blocks = 4", "max_blocks = -1", 1))
    r = sim(str(bad), "-o", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "executor[0].max_blocks must be an int >= 0, got -1" in r.stderr
    typo = tmp_path / "typo.toml"
    typo.write_text(SMOKE.read_text().replace("max_idletime = 60", "max_idle_time = 60", 1))
    r = sim(str(typo))
    assert r.returncode == 2 and "executor[0] has unknown keys ['max_idle_time']" in r.stderr
    r = sim(str(SMOKE), "--only", "nope")
    assert r.returncode == 2 and "no executor configuration labelled ['nope']" in r.stderr


def test_python_m_simcluster(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "simcluster", str(SMOKE), "-o", str(tmp_path), "-q", "--no-plots"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs.csv").exists()


def test_without_matplotlib_the_csv_files_are_written_and_one_line_says_how_to_get_plots(tmp_path: Path) -> None:
    # A matplotlib that cannot be imported, first on the path: as on a machine without the sim extra.
    fake = tmp_path / "no-mpl" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('matplotlib is not installed here')\n")
    r = sim(str(SMOKE), "-o", str(tmp_path / "out"),
            env_extra={"PYTHONPATH": f"{fake.parent}{os.pathsep}{os.getcwd()}"})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    hints = [line for line in r.stderr.splitlines() if "htex-ref[sim]" in line]
    assert hints == ["no plots: matplotlib is not installed (pip install 'htex-ref[sim]' adds timeline.png and "
                     "comparison.png)"]
    assert (tmp_path / "out" / "runs.csv").exists() and (tmp_path / "out" / "simple" / "tasks.csv").exists()
    assert not list((tmp_path / "out").rglob("*.png"))
