"""CLIP scoring with a tiny random open_clip model loaded through the real `local-dir:` path, on CPU.

Random weights say nothing about grounding, so nothing here claims a text matches a video. What is checked: shapes
and normalisation, the frame-embedding cache (written once, reused, keyed by model, repaired when damaged), the
splitting of long texts, the pooling arithmetic (on hand-made embeddings), the frames tiled in a grid (layout,
order, cache, the flag), determinism, and the errors.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from stages.core import clip_weights, hub
from stages.core.clip import ClipConfig, ClipScorer, grid_indices, pooled_score, split_sentences, tile_grid
from stages.core.errors import SaviError
from stages.offline.tiny_clip import build_tiny_clip

SENTENCES = [
    "A red square enters the frame from the left side and moves steadily toward the centre of the picture.",
    "The background stays dark grey for the whole clip, and nothing else moves while the square travels.",
    "Halfway through the video the square slows down slightly before it continues on its way to the right.",
    "A small blue circle appears near the top edge and drifts downward without ever touching the square.",
    "The camera does not move, zoom or pan at any point, so the frame stays fixed from start to finish.",
    "Near the end the square reaches the right edge of the frame and starts to leave the visible area.",
    "In the last frames only the circle remains visible, resting near the bottom of the dark background.",
    "Overall the clip shows two simple shapes moving along straight paths at a constant, gentle speed.",
]


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture
def scorer(tiny_clip) -> ClipScorer:
    return ClipScorer.load(ClipConfig(model=f"local-dir:{tiny_clip}", device="cpu"))


@pytest.fixture(scope="module")
def sampled_once(clip_folder, tmp_path_factory) -> Path:
    """The three clips sampled at 4 frames once per module (sampling per test would dominate the run time)."""
    from stages import sample
    from stages.core.store import open_run

    run = open_run("t", tmp_path_factory.mktemp("sampled"))
    sample.run(run, [clip_folder], sample.SampleConfig(frames=4, workers=1))
    return run.path


@pytest.fixture
def sampled_run(sampled_once, workspace):
    """A fresh copy of that run (no CLIP cache yet) in this test's workspace: run "t" of conftest's fixture."""
    from stages.core.store import open_run

    shutil.copytree(sampled_once, workspace / "t")
    return open_run("t")


@pytest.fixture
def samples(sampled_run):
    rows = [s for s in sampled_run.artifact("samples").read() if s.status == "ok"]
    assert len(rows) == 3
    return rows


def _unit(*v: float) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


# ---------------------------------------------------------------------------------------------------------------
# Loading and embeddings


def test_tiny_clip_loads_through_local_dir_with_normalised_embeddings(scorer, sampled_run, samples, tiny_clip):
    assert scorer.dim == 32 and scorer.context_length == 77
    assert scorer.key.startswith(f"local-{tiny_clip.name}-")
    frames = scorer.frame_embeddings(sampled_run, samples[0])
    assert frames.shape == (4, 32) and frames.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(frames, axis=1), 1.0, atol=1e-5)
    texts = scorer.text_embeddings(["a red square moves to the right", "", "a blue circle"])
    assert [t.shape for t in texts] == [(1, 32), (1, 32), (1, 32)]
    for t in texts:
        assert t.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert scorer.text_embeddings([]) == []


def test_local_dir_weights_are_the_folders_own_whatever_the_default_tag(tiny_clip):
    # The CLI passes the default weights ("openai") along; with a local-dir: model it means "the folder's own".
    default = ClipScorer.load(ClipConfig(model=f"local-dir:{tiny_clip}"))
    empty = ClipScorer.load(ClipConfig(model=f"local-dir:{tiny_clip}", weights=""))
    as_weights = ClipScorer.load(ClipConfig(weights=f"local-dir:{tiny_clip}"))
    assert default.key == empty.key == as_weights.key
    np.testing.assert_array_equal(default.text_embeddings(["x"])[0], as_weights.text_embeddings(["x"])[0])
    with pytest.raises(SaviError, match="brings its own weights"):
        ClipScorer.load(ClipConfig(model=f"local-dir:{tiny_clip}", weights="laion2b_s34b_b79k"))


def test_local_dir_with_a_weights_file_loads_that_file(tiny_clip, tmp_path):
    other = build_tiny_clip(tmp_path / "other", seed=7)
    own = ClipScorer.load(ClipConfig(model=f"local-dir:{tiny_clip}"))
    loaded = ClipScorer.load(ClipConfig(model=f"local-dir:{tiny_clip}",
                                        weights=str(other / "open_clip_model.safetensors")))
    reference = ClipScorer.load(ClipConfig(model=f"local-dir:{other}"))
    assert loaded.key != own.key
    np.testing.assert_allclose(loaded.text_embeddings(["x"])[0], reference.text_embeddings(["x"])[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The frame-embedding cache


def test_cache_is_written_once_and_reused(scorer, sampled_run, samples, monkeypatch):
    sample = samples[0]
    path = sampled_run.path / "clip" / scorer.key / f"{sample.video_id}.npy"
    assert not path.exists()
    first = scorer.frame_embeddings(sampled_run, sample)
    assert path.is_file() and (path.parent / "info.json").is_file()
    np.testing.assert_array_equal(np.load(path), first)
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]

    def fail(frames):
        raise AssertionError("frames were embedded again instead of read from the cache")

    monkeypatch.setattr(scorer, "encode_frames", fail)
    mtime = path.stat().st_mtime_ns
    np.testing.assert_array_equal(scorer.frame_embeddings(sampled_run, sample), first)
    scores = scorer.score_texts(sampled_run, sample, ["a red square", "a blue circle"])
    assert len(scores) == 2 and path.stat().st_mtime_ns == mtime

    # A fresh scorer of the same model (the next round, an eval) finds the same cache.
    again = ClipScorer.load(scorer.cfg)
    assert again.key == scorer.key
    monkeypatch.setattr(again, "encode_frames", fail)
    np.testing.assert_array_equal(again.frame_embeddings(sampled_run, sample), first)


def test_different_clip_models_use_different_cache_folders(scorer, sampled_run, samples, tmp_path):
    other_seed = ClipScorer.load(ClipConfig(model=f"local-dir:{build_tiny_clip(tmp_path / 'seed1', seed=1)}"))
    untrained = ClipScorer.load(dataclasses.replace(scorer.cfg, weights="random"))
    keys = {scorer.key, other_seed.key, untrained.key}
    assert len(keys) == 3
    # Pooling is applied after the cache, so it does not change the key.
    assert ClipScorer.load(dataclasses.replace(scorer.cfg, pooling="max")).key == scorer.key
    for s in (scorer, other_seed, untrained):
        s.frame_embeddings(sampled_run, samples[0])
    folders = {p.name for p in (sampled_run.path / "clip").iterdir()}
    assert folders == keys
    a = np.load(sampled_run.path / "clip" / scorer.key / f"{samples[0].video_id}.npy")
    b = np.load(sampled_run.path / "clip" / other_seed.key / f"{samples[0].video_id}.npy")
    assert not np.allclose(a, b)


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "wrong_shape"])
def test_a_damaged_cache_file_is_recomputed(scorer, sampled_run, samples, damage):
    sample = samples[1]
    good = scorer.frame_embeddings(sampled_run, sample)
    path = scorer.cache_path(sampled_run, sample.video_id)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"not a numpy file at all" * 10)
    else:
        with open(path, "wb") as f:
            np.save(f, good[:2])
    np.testing.assert_allclose(scorer.frame_embeddings(sampled_run, sample), good, atol=1e-6)
    np.testing.assert_allclose(np.load(path), good, atol=1e-6)  # repaired on disk


def test_a_cache_older_than_the_frames_is_recomputed(scorer, sampled_run, samples, monkeypatch):
    sample = samples[2]
    scorer.frame_embeddings(sampled_run, sample)
    path = scorer.cache_path(sampled_run, sample.video_id)
    old = time.time() - 3600
    os.utime(path, (old, old))  # as if the run had been re-sampled after the cache was written
    calls = []
    original = scorer.encode_frames
    monkeypatch.setattr(scorer, "encode_frames", lambda frames: calls.append(1) or original(frames))
    scorer.frame_embeddings(sampled_run, sample)
    assert calls == [1]
    scorer.frame_embeddings(sampled_run, sample)
    assert calls == [1]


def test_videos_without_frames_are_refused(scorer, sampled_run, samples):
    failed = dataclasses.replace(samples[0], status="error", error="decoder cannot read the file", frames_dir=None)
    with pytest.raises(SaviError, match="decoder cannot read the file"):
        scorer.frame_embeddings(sampled_run, failed)
    gone = dataclasses.replace(samples[0], frames_dir="frames/nothing-here")
    with pytest.raises(SaviError, match="savi sample"):
        scorer.frame_embeddings(sampled_run, gone)


# ---------------------------------------------------------------------------------------------------------------
# Long texts


def test_long_text_is_split_into_sentences_and_all_of_them_count(scorer, sampled_run, samples):
    text = " ".join(SENTENCES)
    assert scorer.token_count(text) > 77
    assert all(scorer.fits(s) for s in SENTENCES)
    assert scorer.segments(text) == SENTENCES
    [embedded] = scorer.text_embeddings([text])
    assert embedded.shape == (8, 32)
    np.testing.assert_allclose(embedded, np.concatenate(scorer.text_embeddings(SENTENCES)), atol=1e-5)

    frames = scorer.frame_embeddings(sampled_run, samples[0])
    per_sentence = [float((frames @ e.T).mean()) for e in embedded]
    assert scorer.score(frames, embedded) == pytest.approx(np.mean(per_sentence), abs=1e-6)
    assert scorer.score_texts(sampled_run, samples[0], [text])[0] == pytest.approx(np.mean(per_sentence), abs=1e-6)
    as_max = ClipScorer.load(dataclasses.replace(scorer.cfg, text_pooling="max"))
    assert as_max.score(frames, embedded) == pytest.approx(max(per_sentence), abs=1e-6)
    # Dropping any one sentence changes the score: each of them took part.
    for k in range(8):
        assert scorer.score(frames, np.delete(embedded, k, axis=0)) != pytest.approx(np.mean(per_sentence), abs=1e-9)


def test_short_text_with_several_sentences_stays_whole(scorer):
    text = "A red square moves right. Then it stops."
    assert scorer.segments(text) == [text]
    assert scorer.text_embeddings([text])[0].shape == (1, 32)


def test_a_single_overlong_sentence_is_split_into_word_windows(scorer):
    words = [f"word{k % 37}" for k in range(200)]
    sentence = " ".join(words)
    windows = scorer.segments(sentence)
    assert len(windows) > 1
    assert all(scorer.fits(w) for w in windows)
    assert " ".join(windows).split() == words  # every word once, in order: nothing cut away
    assert scorer.text_embeddings([sentence])[0].shape == (len(windows), 32)


def test_split_sentences():
    assert split_sentences("One. Two!  Three?\nFour\n\nfive.") == ["One.", "Two!", "Three?", "Four", "five."]
    assert split_sentences("   ") == []
    assert split_sentences("3.5 metres, e.g.the end") == ["3.5 metres, e.g.the end"]


# ---------------------------------------------------------------------------------------------------------------
# Pooling arithmetic on hand-made embeddings


FRAMES = np.stack([_unit(1, 0, 0), _unit(0, 1, 0), _unit(0.6, 0.8, 0), _unit(0, 0, 1)])
# cosines with e_x: [1, 0, 0.6, 0]; with e_y: [0, 1, 0.8, 0]


@pytest.mark.parametrize(("pooling", "topk", "expected"), [
    ("mean", 4, 0.4), ("max", 4, 1.0), ("topk", 2, 0.8), ("topk", 3, (1 + 0.6 + 0) / 3), ("topk", 10, 0.4),
    ("topk", 1, 1.0),
])
def test_frame_pooling_numbers(pooling, topk, expected):
    assert pooled_score(FRAMES, _unit(1, 0, 0), pooling, topk) == pytest.approx(expected, abs=1e-12)
    assert pooled_score(FRAMES, _unit(1, 0, 0)[None, :], pooling, topk) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("pooling", "text_pooling", "expected"), [
    ("mean", "mean", (0.4 + 0.45) / 2), ("mean", "max", 0.45), ("max", "mean", 1.0), ("max", "max", 1.0),
    ("topk", "mean", (0.8 + 0.9) / 2), ("topk", "max", 0.9),
])
def test_sentence_pooling_numbers(scorer, pooling, text_pooling, expected):
    text = np.stack([_unit(1, 0, 0), _unit(0, 1, 0)])
    assert pooled_score(FRAMES, text, pooling, 2, text_pooling) == pytest.approx(expected, abs=1e-12)
    # ClipScorer.score applies its config's pooling.
    scorer.cfg = ClipConfig(model=scorer.cfg.model, pooling=pooling, topk=2, text_pooling=text_pooling)
    assert scorer.score(FRAMES.astype(np.float32), text.astype(np.float32)) == pytest.approx(expected, abs=1e-6)


def test_pooled_score_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        pooled_score(FRAMES, np.ones(5))
    with pytest.raises(ValueError):
        pooled_score(np.zeros((0, 3)), _unit(1, 0, 0))


def test_bad_pooling_options_are_user_errors():
    with pytest.raises(SaviError, match="mean, max, topk"):
        ClipConfig(pooling="median")
    with pytest.raises(SaviError, match="mean, max"):
        ClipConfig(text_pooling="topk")
    with pytest.raises(SaviError, match="topk"):
        ClipConfig(topk=0)
    with pytest.raises(SaviError, match="unknown CLIP frames 'strip': use one of each, grid"):
        ClipConfig(frames="strip")


# ---------------------------------------------------------------------------------------------------------------
# Frames tiled in a grid (--clip-frames grid)


def test_grid_picks_evenly_spaced_frames_in_time_order():
    assert grid_indices(8) == [0, 2, 5, 7]
    assert grid_indices(32) == [0, 10, 21, 31]
    assert grid_indices(4) == [0, 1, 2, 3]
    assert grid_indices(3) == [0, 1, 1, 2]  # fewer frames than tiles: some repeat, the order stays
    assert grid_indices(2) == [0, 0, 1, 1]
    assert grid_indices(1) == [0, 0, 0, 0]
    assert grid_indices(10, tiles=9) == [0, 1, 2, 3, 5, 6, 7, 8, 9]


def test_grid_places_the_central_square_of_each_picked_frame_row_major():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, size=(8, 6, 10, 3), dtype=np.uint8)  # 8 frames, 6 px high, 10 px wide
    grid = tile_grid(wide)
    assert grid.shape == (12, 12, 3) and grid.dtype == np.uint8
    # Frames 0, 2, 5 and 7; each the 6 x 6 square at columns 2-7 (the centre of 10 columns).
    np.testing.assert_array_equal(grid[:6, :6], wide[0, :, 2:8])
    np.testing.assert_array_equal(grid[:6, 6:], wide[2, :, 2:8])
    np.testing.assert_array_equal(grid[6:, :6], wide[5, :, 2:8])
    np.testing.assert_array_equal(grid[6:, 6:], wide[7, :, 2:8])
    assert grid[0, 6].tolist() == wide[2, 0, 2].tolist() and grid[11, 11].tolist() == wide[7, 5, 7].tolist()

    tall = rng.integers(0, 256, size=(4, 9, 5, 3), dtype=np.uint8)  # rows 2-6 are the central square
    grid = tile_grid(tall)
    assert grid.shape == (10, 10, 3)
    for k in range(4):
        row, col = divmod(k, 2)
        np.testing.assert_array_equal(grid[5 * row:5 * row + 5, 5 * col:5 * col + 5], tall[k, 2:7])
    with pytest.raises(ValueError):
        tile_grid(np.zeros((0, 4, 4, 3), dtype=np.uint8))


@pytest.fixture
def grid_scorer(scorer) -> ClipScorer:
    return ClipScorer.load(dataclasses.replace(scorer.cfg, frames="grid"))


def test_grid_scores_texts_against_one_embedding_of_the_tiled_frames(grid_scorer, scorer, sampled_run, samples,
                                                                     monkeypatch):
    from stages.core.video import load_frames

    sample = samples[0]
    assert grid_scorer.key == scorer.key  # the same model: one cache folder, the grid in a file of its own
    video = grid_scorer.video_embeddings(sampled_run, sample)
    assert video.shape == (1, 32) and video.dtype == np.float32
    image = grid_scorer.encode_frames(tile_grid(load_frames(sampled_run.path / sample.frames_dir))[None])
    np.testing.assert_allclose(video, image, atol=1e-6)
    texts = ["a red square moves to the right", " ".join(SENTENCES)]
    embedded = grid_scorer.text_embeddings(texts)
    scores = grid_scorer.score_texts(sampled_run, sample, texts)
    assert scores[0] == pytest.approx(float(image[0] @ embedded[0][0]), abs=1e-6)  # the cosine, nothing else
    assert scores[1] == pytest.approx(float((embedded[1] @ image[0]).mean()), abs=1e-6)  # sentences: the mean
    assert scores != pytest.approx(scorer.score_texts(sampled_run, sample, texts), abs=1e-6)

    path = grid_scorer.grid_cache_path(sampled_run, sample.video_id)
    assert path == sampled_run.path / "clip" / scorer.key / "grid-2x2" / f"{sample.video_id}.npy"
    np.testing.assert_array_equal(np.load(path), video)
    # The per-frame cache is separate (written above by `scorer`, (4, D)), and neither overwrote the other.
    assert np.load(scorer.cache_path(sampled_run, sample.video_id)).shape == (4, 32)

    def fail(frames):
        raise AssertionError("the grid was embedded again instead of read from the cache")

    monkeypatch.setattr(grid_scorer, "encode_frames", fail)
    assert grid_scorer.score_texts(sampled_run, sample, texts) == scores


def test_reversed_frames_change_the_grid_score_but_not_the_per_frame_mean(scorer, grid_scorer, sampled_run,
                                                                          samples):
    # The same clip played backwards: the same frames, so "moves right" and "moves left" swap truth.
    forward = samples[0]
    files = sorted((sampled_run.path / forward.frames_dir).glob("*.jpg"))
    backward_dir = sampled_run.path / "frames" / "backward"
    backward_dir.mkdir()
    for name, source in zip(files, reversed(files)):
        shutil.copyfile(source, backward_dir / name.name)
    backward = dataclasses.replace(forward, video_id="backward", frames_dir="frames/backward")
    texts = ["a red square moves to the right", "a red square moves to the left"]

    # A mean over frames cannot tell the two apart: it is the same set of frames.
    assert scorer.score_texts(sampled_run, backward, texts) == pytest.approx(
        scorer.score_texts(sampled_run, forward, texts), abs=1e-9)
    # The grid can: the tiles change places. (Random weights: the gap is small, but far above rounding.)
    ahead = grid_scorer.score_texts(sampled_run, forward, texts)
    behind = grid_scorer.score_texts(sampled_run, backward, texts)
    assert max(abs(a - b) for a, b in zip(ahead, behind)) > 1e-4


# ---------------------------------------------------------------------------------------------------------------
# Determinism (random weights cannot show grounding; they can show the numbers are stable and bounded)


def test_scores_are_deterministic_and_bounded(scorer, sampled_run, samples, tiny_clip):
    texts = ["a red square moves to the right", " ".join(SENTENCES), "a blue circle falls", ""]
    first = [scorer.score_texts(sampled_run, s, texts) for s in samples]
    fresh = ClipScorer.load(ClipConfig(model=f"local-dir:{tiny_clip}", device="cpu"))
    for rows in (fresh.score_texts(sampled_run, s, texts) for s in samples):
        assert all(-1.0 <= v <= 1.0 for v in rows)
    again = [fresh.score_texts(sampled_run, s, texts) for s in samples]
    np.testing.assert_allclose(again, first, atol=1e-6)
    # Without the cache (frames embedded afresh) the numbers are the same.
    from stages.core.video import load_frames

    direct = fresh.encode_frames(load_frames(sampled_run.path / samples[0].frames_dir))
    np.testing.assert_allclose(direct, fresh.frame_embeddings(sampled_run, samples[0]), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Errors


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No Hugging Face cache and no ~/.cache/clip, whatever the machine running the tests has."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_unknown_model_name():
    with pytest.raises(SaviError, match=r"unknown CLIP model 'ViT-B-33'.*open_clip.list_models\(\)") as e:
        ClipScorer.load(ClipConfig(model="ViT-B-33", weights="random"))
    assert "ViT-B-32" in str(e.value)  # the close match is suggested


def test_pretrained_tag_offline_fails_with_instructions_before_any_download(empty_caches, monkeypatch):
    # How fast it fails depends on the machine: benchmarks/bench_clip_offline_failure_time.py measures it.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    probed = []
    monkeypatch.setattr(hub.socket, "create_connection", lambda address, *a, **k: probed.append(address))
    with pytest.raises(SaviError) as e:
        ClipScorer.load(ClipConfig(model="ViT-B-32", weights="openai"))
    message = str(e.value)
    assert "\n" not in message
    assert "CLIP weights 'openai' for ViT-B-32 are not on this machine and cannot be downloaded here" in message
    assert "open_clip.create_model_and_transforms(\"ViT-B-32\", pretrained=\"openai\")" in message
    assert "~/.cache/huggingface" in message and "--clip-weights /path/to/open_clip_pytorch_model.bin" in message
    assert probed == []  # declared offline: the network is not even probed


def test_pretrained_tag_without_network_fails_after_one_probe_even_if_not_declared_offline(empty_caches,
                                                                                            monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    probed = []

    def no_network(address, timeout=None, *args, **kwargs):
        probed.append(address)
        raise OSError("network is unreachable")

    monkeypatch.setattr(hub.socket, "create_connection", no_network)
    with pytest.raises(SaviError, match="cannot be downloaded here"):
        ClipScorer.load(ClipConfig(model="ViT-B-32", weights="laion2b_s34b_b79k"))
    assert probed and probed[0][0] == "huggingface.co"
    assert len(probed) == 1  # one probe, no retries: it fails at once


def test_a_cached_pretrained_tag_is_found_without_network(empty_caches):
    from open_clip import pretrained as oc_pretrained

    tag_cfg = oc_pretrained.get_pretrained_cfg("ViT-B-32", "openai")
    assert clip_weights._cached_tag_file(tag_cfg) is None
    repo = empty_caches / "hf-cache" / "models--timm--vit_base_patch32_clip_224.openai"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    weights = repo / "snapshots" / "abc" / "open_clip_model.safetensors"
    weights.write_bytes(b"x")
    assert clip_weights._cached_tag_file(tag_cfg) == str(weights)
    weights.unlink()
    legacy = empty_caches / "home" / ".cache" / "clip" / "ViT-B-32.pt"  # open_clip's URL download cache
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"x")
    assert clip_weights._cached_tag_file(tag_cfg) == str(legacy)


def test_missing_local_weights_file(tmp_path):
    missing = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    with pytest.raises(SaviError, match=f"CLIP weights file {missing} does not exist"):
        ClipScorer.load(ClipConfig(model="ViT-B-32", weights=str(missing)))


def test_unknown_weights_tag_lists_the_tags():
    with pytest.raises(SaviError, match="neither a pretrained tag of ViT-B-32 .*laion2b_s34b_b79k"):
        ClipScorer.load(ClipConfig(model="ViT-B-32", weights="laion5b"))


def test_local_dir_errors(tmp_path, tiny_clip):
    with pytest.raises(SaviError, match="does not exist"):
        ClipScorer.load(ClipConfig(model=f"local-dir:{tmp_path / 'absent'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaviError, match="has no open_clip_config.json"):
        ClipScorer.load(ClipConfig(model=f"local-dir:{tmp_path / 'empty'}"))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "open_clip_config.json").write_bytes((tiny_clip / "open_clip_config.json").read_bytes())
    with pytest.raises(SaviError, match="no weights file"):
        ClipScorer.load(ClipConfig(model=f"local-dir:{no_weights}"))
    untrained = ClipScorer.load(ClipConfig(model=f"local-dir:{no_weights}", weights="random"))
    assert untrained.dim == 32


def test_weights_that_do_not_fit_the_architecture(tiny_clip, tmp_path):
    import json

    wider = tmp_path / "wider"
    wider.mkdir()
    config = json.loads((tiny_clip / "open_clip_config.json").read_text())
    config["model_cfg"]["embed_dim"] = 48
    (wider / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(SaviError, match="could not load CLIP local-dir:.*wider with weights .*safetensors"):
        ClipScorer.load(ClipConfig(model=f"local-dir:{wider}", weights=str(tiny_clip / "open_clip_model.safetensors")))


# ---------------------------------------------------------------------------------------------------------------
# The flag


@pytest.mark.slow
def test_savi_filter_clip_frames_grid_scores_with_the_grid_and_records_it(tiny_clip, sampled_run, samples):
    from typer.testing import CliRunner

    from savi_cli.main import app
    from stages.core.records import Candidate
    from stages.core.store import ArtifactWriter

    writer = ArtifactWriter(sampled_run.artifact("candidates", 1), params={}, inputs={})
    for k, sample in enumerate(samples):
        writer.add(Candidate(f"p{k}", sample.video_id, f"q{k}", "Which way does the shape move?",
                             "The shape moves to the right.", "The shape moves up and away.", "revision", f"a{k}",
                             f"c{k}", "critique", None, None, True, None))
    writer.finish()

    def savi_filter(*flags):
        return CliRunner().invoke(app, ["filter", "--run", "t", "--round", "1", "--clip-model",
                                        f"local-dir:{tiny_clip}", "--device", "cpu", *flags])

    result = savi_filter("--clip-frames", "grid")
    assert result.exit_code == 0, result.output
    art = sampled_run.artifact("pairs", 1)
    assert art.manifest()["params"]["clip_frames"] == "grid"
    grid = ClipScorer.load(ClipConfig(model=f"local-dir:{tiny_clip}", device="cpu", frames="grid"))
    by_video = {s.video_id: s for s in samples}
    for pair in art.read():
        expected = grid.score_texts(sampled_run, by_video[pair.video_id], [pair.chosen, pair.rejected])
        np.testing.assert_allclose([pair.chosen_clip, pair.rejected_clip], expected, atol=1e-5)

    # Scores made from the grid are not taken for per-frame ones: the default refuses, --force redoes them.
    refused = savi_filter()
    assert refused.exit_code == 1
    assert refused.stderr.startswith("Error: ") and "clip_frames: 'grid' -> None" in refused.stderr
    assert savi_filter("--force").exit_code == 0
    assert "clip_frames" not in art.manifest()["params"]
    each = ClipScorer.load(ClipConfig(model=f"local-dir:{tiny_clip}", device="cpu"))
    for pair in art.read():
        expected = each.score_texts(sampled_run, by_video[pair.video_id], [pair.chosen, pair.rejected])
        np.testing.assert_allclose([pair.chosen_clip, pair.rejected_clip], expected, atol=1e-5)
