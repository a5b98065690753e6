"""The GPU check and the vision-autograd benchmark, exercised on CPU.

`benchmarks/gpu_check.sh` runs once, on a lent GPU machine with no network and minutes of device time; a path
that breaks there costs the whole run. Its `--dry-run-cpu` runs the same code end to end on CPU with the 7B config
shrunk, so it is tested here: it must finish, report every figure, and leave the docs alone. The vision-autograd
benchmark is checked for what it exists to show: trl's hook puts the frozen vision tower into autograd, and savi's
trainer keeps it out. No timing or memory ceiling is asserted: those depend on the machine.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def benchmark_env() -> dict[str, str]:
    # One torch thread: the test suite's other processes would otherwise stall every operator of these runs.
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_the_gpu_check_dry_run_reports_every_figure_and_leaves_the_docs_alone(tmp_path):
    docs = ROOT / "docs" / "PERFORMANCE.md"
    before = hashlib.sha256(docs.read_bytes()).hexdigest()
    section = tmp_path / "section.md"

    done = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run-cpu", "--work", str(tmp_path / "work"),
                           "--out", str(section), "--copy-to", str(tmp_path / "copied")],
                          cwd=ROOT, env=benchmark_env(), capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert hashlib.sha256(docs.read_bytes()).hexdigest() == before
    text = section.read_text()
    assert text.startswith("## GPU check (DRY RUN)")
    assert "Not measured" not in text

    dpo = json.loads((tmp_path / "copied" / "gpu-check-dpo.json").read_text())
    by_vision = {r["vision"]: r for r in dpo["results"]}
    assert {"trl", "savi"} <= set(by_vision)  # before and after
    assert all(r["error"] is None and r["video_tokens"] > 0 and r["peak_rss_gib"] > 0 for r in dpo["results"])
    assert by_vision["trl"]["vision_output_requires_grad"] is True
    assert dpo["imported_but_absent_on_gpu_machine"] == []
    for r in dpo["results"]:
        assert f"| {r['label']} |" in text

    generate = json.loads((tmp_path / "copied" / "gpu-check-generate.json").read_text())
    assert [row["batch_size"] for row in generate["summary"]] == [1, 8, 16]
    assert all(row["tokens"] > 0 for row in generate["summary"])
    assert generate["imported_but_absent_on_gpu_machine"] == []
    for batch in (1, 8, 16):
        assert any(line.startswith(f"| {batch} |") for line in text.splitlines())

    evaluation = json.loads((tmp_path / "copied" / "gpu-check-eval.json").read_text())
    assert set(evaluation["questions_per_s"]) == {"likelihood", "generate"}
    assert evaluation["questions"] > 0 and evaluation["imported_but_absent_on_gpu_machine"] == []
    assert "| likelihood |" in text and "| generate |" in text


def test_savis_trainer_keeps_the_vision_tower_out_of_autograd(tmp_path):
    out = tmp_path / "vision.json"
    done = subprocess.run([sys.executable, "benchmarks/bench_vision_autograd.py", "--variants", "trl,savi",
                           "--frames", "8", "--size", "112", "--dir", str(tmp_path / "work"), "--json", str(out)],
                          cwd=ROOT, env=benchmark_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {r["variant"]: r for r in json.loads(out.read_text())["results"]}

    before, after = results["trl"], results["savi"]
    # The measurement sees the tower in autograd when trl's hook is on it...
    assert before["vision_output_requires_grad"]
    assert before["kept_until_backward_bytes"] > 0
    assert before["blocks_recomputed_in_backward"] > 0
    # ...and savi's own step keeps nothing of it for backward.
    assert not after["vision_output_requires_grad"], after["hooked_embeddings"]
    assert after["kept_until_backward_bytes"] == 0
    assert after["blocks_recomputed_in_backward"] == 0
