import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch) -> Path:
    """Every test gets its own workspace; none touches ./runs."""
    root = tmp_path / "runs"
    monkeypatch.setenv("SAVI_HOME", str(root))
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """`tiny_model(family)`: the folder of a tiny random model of that family, built once per test session."""
    from stages.offline.tiny_model import build_tiny_model

    built: dict[str, Path] = {}

    def get(family: str = "qwen2_5_vl") -> Path:
        if family not in built:
            built[family] = build_tiny_model(tmp_path_factory.mktemp(f"model-{family}"), family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory) -> Path:
    """Three small clean clips with different shapes and motions."""
    from stages.offline import videos as synthetic

    folder = tmp_path_factory.mktemp("clips")
    shapes = [("square", "red", "left_to_right"), ("circle", "blue", "top_to_bottom"),
              ("square", "green", "right_to_left")]
    for n, (kind, color, direction) in enumerate(shapes):
        synthetic.write_video(folder / f"clip{n}.mp4", num_frames=16, fps=8, seed=n,
                              shapes=(synthetic.Shape(kind, color, direction),))
    return folder


@pytest.fixture
def sampled_run(clip_folder):
    """A run named `t` in the test's workspace, with the three clips sampled at 4 frames each."""
    from stages import sample
    from stages.core.store import open_run

    run = open_run("t")
    sample.run(run, [clip_folder], sample.SampleConfig(frames=4, workers=1))
    return run


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """End the report (after `-ra`'s list, just before the final counts) with one line saying how many tests were
    skipped and why."""
    yield
    skipped = terminalreporter.stats.get("skipped", [])
    reasons: dict[str, int] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if not reasons:
        terminalreporter.write_line("skipped: none")
        return
    why = "; ".join(f"{n} x {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    terminalreporter.write_line(f"skipped: {len(skipped)} test{'s' if len(skipped) != 1 else ''} ({why})")
