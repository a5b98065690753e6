"""The demo pipeline survives SIGKILL anywhere: benchmarks/kill_pipeline.py kills it at least 20 times, in every
stage of both rounds, reruns it each time, and compares every table with an uninterrupted run's."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kill_pipeline.py"
STAGE_KINDS = ("sampling", "ask", "answer", "critique", "filter", "dpo", "eval")


def test_twenty_kills_across_every_stage_lose_and_duplicate_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--kills-per-stage", "2", "--seed", "7", "--dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=1500)
    report = json.loads(done.stdout)
    assert report["problems"] == [] and done.returncode == 0, done.stderr[-2000:]
    assert report["kills"] >= 20
    hit = " ".join(report["stages_hit"])
    assert all(kind in hit for kind in STAGE_KINDS), report["stages_hit"]
    assert report["tables_checked"] == 16 and report["rows_checked"] > 200
