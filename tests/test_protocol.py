"""lmms-eval 0.7.3's video protocol (`stages/benchmarks/protocol.py`): frame indices, frame sizes, reply lengths.

Expected values are derived by hand in the comments, from the rules the module's docstring states, so a change in
any rule shows up here as a diff.
"""

import pytest

from stages.benchmarks import BENCHMARKS
from stages.benchmarks.protocol import (
    FAMILIES,
    decoded_frame_count,
    family_of,
    frame_indices,
    frame_size,
    reply_tokens,
)
from stages.core.errors import SaviError

QWEN_CHAT = ("qwen2_5_vl", "qwen3_vl")

# ---------------------------------------------------------------------------------------------------------------
# reply_tokens


@pytest.mark.parametrize(("benchmark", "tokens"), [
    ("egoschema", 16), ("mvbench", 16), ("videomme", 16), ("longvideobench", 32),
    ("nextqa", 128), ("perceptiontest", 128), ("tempcompass", 128), ("world", 16),
])
def test_reply_tokens_are_the_task_yaml_value_or_the_chat_default(benchmark, tokens):
    assert reply_tokens(benchmark) == tokens


def test_reply_tokens_cover_every_savi_benchmark():
    for name in BENCHMARKS:
        assert reply_tokens(name) > 0


@pytest.mark.parametrize("benchmark", ["nextqa", "perceptiontest", "tempcompass"])
def test_reply_tokens_of_tasks_without_a_budget_follow_the_model_path(benchmark):
    assert [reply_tokens(benchmark, family) for family in FAMILIES] == [128, 128, 128, 1024]


def test_reply_tokens_of_tasks_with_a_budget_ignore_the_model_path():
    assert {reply_tokens("longvideobench", family) for family in FAMILIES} == {32}


def test_reply_tokens_reject_an_unknown_benchmark_or_family():
    with pytest.raises(SaviError, match="'mmlu'"):
        reply_tokens("mmlu")
    with pytest.raises(SaviError, match="'llava'"):
        reply_tokens("nextqa", "llava")


# ---------------------------------------------------------------------------------------------------------------
# family_of


@pytest.mark.parametrize(("model_type", "family"), [
    ("qwen2_vl", "qwen2_vl"), ("qwen2_5_vl", "qwen2_5_vl"), ("qwen3_vl", "qwen3_vl"), ("qwen3_vl_moe", "qwen3_vl"),
    ("llava_onevision", "llava_onevision"),
])
def test_family_of_maps_each_supported_model_type(model_type, family):
    assert family_of(model_type) == family


def test_family_of_rejects_an_unknown_model_type_in_one_line_naming_it():
    with pytest.raises(SaviError) as raised:
        family_of("internvl_chat")
    message = str(raised.value)
    assert "'internvl_chat'" in message and "qwen3_vl_moe" in message and "\n" not in message


# ---------------------------------------------------------------------------------------------------------------
# frame_indices: Qwen2.5-VL and Qwen3-VL chat paths, linspace(0, T - 1, n).round()

# 300 frames, n = 32: index i is round(i * 299 / 31) = round(i * 9.645...): 0, 10 (9.65), 19 (19.29), 29 (28.94),
# ..., 154 (154.32) at i = 16, ..., 299.
QWEN_300 = [0, 10, 19, 29, 39, 48, 58, 68, 77, 87, 96, 106, 116, 125, 135, 145, 154, 164, 174, 183, 193, 203, 212,
            222, 231, 241, 251, 260, 270, 280, 289, 299]


@pytest.mark.parametrize("family", QWEN_CHAT)
def test_qwen_chat_takes_32_rounded_linspace_frames_from_a_300_frame_clip(family):
    assert frame_indices(family, 300) == QWEN_300


def test_qwen2_5_vl_takes_30_frames_of_a_31_frame_clip_skipping_frame_15():
    # n = min(32, 31) = 31, floored to even: 30. Index i is round(i * 30 / 29) = i + round(i / 29): i for i <= 14,
    # i + 1 from i = 15 (15.52 -> 16), so 15 is the one frame left out.
    assert frame_indices("qwen2_5_vl", 31) == [*range(15), *range(16, 31)]


def test_qwen2_5_vl_takes_both_frames_of_a_2_frame_clip_and_the_ends_of_a_3_frame_clip():
    assert frame_indices("qwen2_5_vl", 2) == [0, 1]
    assert frame_indices("qwen2_5_vl", 3) == [0, 2]  # min(32, 3) = 3, floored to even: 2


def test_qwen2_5_vl_fails_on_a_1_frame_clip_as_qwen_vl_utils_does():
    # n is at least 2, and qwen-vl-utils' smart_nframes refuses more frames than the clip has.
    with pytest.raises(SaviError, match="1-frame clip"):
        frame_indices("qwen2_5_vl", 1)


def test_qwen2_5_vl_takes_the_frame_count_asked_for():
    # n = 16: round(i * 299 / 15) = round(i * 19.93): 0, 20, 40, 60, 80, 100, 120, 140, 159 (159.47), ...
    assert frame_indices("qwen2_5_vl", 300, 16) == [0, 20, 40, 60, 80, 100, 120, 140, 159, 179, 199, 219, 239, 259,
                                                      279, 299]
    assert len(frame_indices("qwen2_5_vl", 300, 13)) == 12  # floored to even


def test_qwen3_vl_fails_on_clips_shorter_than_the_32_frames_it_asks_for():
    # lmms-eval's Qwen3-VL path passes nframes = 32 without looking at the clip's length.
    for total in (1, 2, 31):
        with pytest.raises(SaviError, match="more than the clip has"):
            frame_indices("qwen3_vl", total)
    assert frame_indices("qwen3_vl", 32) == list(range(32))


def test_qwen3_vl_rounds_an_odd_frame_count_half_to_even():
    # smart_nframes: round(n / 2) * 2 with Python's round: 13 -> round(6.5) = 6 -> 12; 15 -> round(7.5) = 8 -> 16.
    assert len(frame_indices("qwen3_vl", 300, 13)) == 12
    assert len(frame_indices("qwen3_vl", 300, 15)) == 16


@pytest.mark.parametrize("family", QWEN_CHAT)
def test_qwen_chat_indices_are_the_nearest_frames_to_even_spacing(family):
    for total in (40, 97, 1000, 12345):
        indices = frame_indices(family, total)
        step = (total - 1) / (len(indices) - 1)
        assert all(abs(index - i * step) <= 0.5 for i, index in enumerate(indices))


# ---------------------------------------------------------------------------------------------------------------
# frame_indices: Qwen2-VL simple path, 2 fps through qwen-vl-utils, then 32 of those


def test_qwen2_vl_takes_2_frames_a_second_from_a_short_clip():
    # 300 frames at 30 fps: n = 300 / 30 * 2 = 20 (within [4, 300]). round(i * 299 / 19) = round(i * 15.74):
    # 0, 16, 31 (31.47), 47, ... Keeping 32 of 20 frames keeps all 20.
    assert frame_indices("qwen2_vl", 300, fps=30.0) == [0, 16, 31, 47, 63, 79, 94, 110, 126, 142, 157, 173, 189, 205,
                                                        220, 236, 252, 268, 283, 299]


def test_qwen2_vl_keeps_32_truncated_linspace_frames_of_a_longer_clip():
    # 300 frames at 5 fps: n = 120, first pass round(i * 299 / 119). Second pass int(j * 119 / 31): 0, 3 (3.84),
    # 7 (7.68), ...; first-pass frame 3 is round(7.54) = 8, frame 7 is round(17.59) = 18.
    indices = frame_indices("qwen2_vl", 300, fps=5.0)
    assert len(indices) == 32
    assert indices[:3] == [0, 8, 18] and indices[-1] == 299


def test_qwen2_vl_takes_at_least_4_frames_and_never_more_than_the_clip_has():
    # 31 frames at 30 fps: 31 / 30 * 2 = 2.07 -> raised to 4 -> round(i * 30 / 3) = 0, 10, 20, 30.
    assert frame_indices("qwen2_vl", 31, fps=30.0) == [0, 10, 20, 30]
    # 2 and 3 frames: the most is min(768, T) floored to even = 2.
    assert frame_indices("qwen2_vl", 2, fps=30.0) == [0, 1]
    assert frame_indices("qwen2_vl", 3, fps=30.0) == [0, 2]


def test_qwen2_vl_fails_on_a_1_frame_clip_and_needs_the_frame_rate():
    with pytest.raises(SaviError, match="1-frame clip"):
        frame_indices("qwen2_vl", 1, fps=30.0)
    with pytest.raises(SaviError, match="frame rate"):
        frame_indices("qwen2_vl", 300)


def test_qwen2_vl_decodes_every_2_fps_frame_but_keeps_32():
    # 6 minutes at 30 fps: 10800 / 30 * 2 = 720 frames decoded (and resized together), 32 kept.
    assert decoded_frame_count("qwen2_vl", 10800, fps=30.0) == 720
    assert len(frame_indices("qwen2_vl", 10800, fps=30.0)) == 32
    assert decoded_frame_count("qwen2_5_vl", 10800) == 32
    assert decoded_frame_count("llava_onevision", 10) == 32


# ---------------------------------------------------------------------------------------------------------------
# frame_indices: LLaVA-OneVision simple path, np.linspace(0, T - 1, 32, dtype=int)


def test_llava_onevision_takes_32_truncated_linspace_frames_from_a_300_frame_clip():
    # int(i * 299 / 31) = int(i * 9.645): 0, 9, 19, 28, ...; the last is exactly 299.
    indices = frame_indices("llava_onevision", 300)
    assert len(indices) == 32
    assert indices[:4] == [0, 9, 19, 28] and indices[-1] == 299


def test_llava_onevision_repeats_frames_of_clips_shorter_than_32():
    # int(i * 30 / 31) = i - 1 for 1 <= i <= 30 and 30 for i = 31: frame 0 twice.
    assert frame_indices("llava_onevision", 31) == [0, *range(31)]
    assert frame_indices("llava_onevision", 2) == [0] * 31 + [1]
    assert frame_indices("llava_onevision", 1) == [0] * 32


def test_llava_onevision_takes_the_frame_count_asked_for():
    # int(i * 299 / 15) = int(i * 19.93): 0, 19, 39, 59, ...
    assert frame_indices("llava_onevision", 300, 16)[:4] == [0, 19, 39, 59]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_frame_indices_reject_a_clip_or_frame_count_below_1_or_not_whole(bad):
    with pytest.raises(SaviError, match="whole number"):
        frame_indices("llava_onevision", bad)
    with pytest.raises(SaviError, match="whole number"):
        frame_indices("llava_onevision", 300, bad)


def test_frame_indices_reject_an_unknown_family():
    with pytest.raises(SaviError, match="unknown model family 'qwen_vl'"):
        frame_indices("qwen_vl", 300)


# ---------------------------------------------------------------------------------------------------------------
# frame_size
#
# Per-frame pixel range, 32 frames decoded. Qwen2.5-VL: factor 28, min 200704, max min(1605632, 768 * 28^2 =
# 602112, 128000 * 28^2 * 0.9 / 32 * 2 = 5644800) = 602112. Qwen3-VL: factor 32, min 200704, max min(1605632,
# 768 * 32^2 = 786432, ...) = 786432. Qwen2-VL: factor 28, min 3136, max 602112.
#
# 1080x1920, factor 28: round(38.57) * 28 = 1092, round(68.57) * 28 = 1932, area 2109744 > 602112 -> shrink by
#   sqrt(2073600 / 602112) = 1.8558: floor(581.97 / 28) * 28 = 560, floor(1034.6 / 28) * 28 = 1008.
# 1080x1920, factor 32: 1088 x 1920 = 2088960 > 786432 -> shrink by sqrt(2073600 / 786432) = 1.6238:
#   floor(665.1 / 32) * 32 = 640, floor(1182.4 / 32) * 32 = 1152.
# 480x640, factor 28: round(17.14) * 28 = 476, round(22.86) * 28 = 644, area 306544: within range, kept.
# 480x640, factor 32: 480 x 640 (15 and 20 patches exactly), area 307200: kept.
# 56x56: factor 28 -> 56x56 = 3136, factor 32 -> round(1.75) * 32 = 64 -> 4096; below 200704 -> grow by
#   sqrt(200704 / 3136) = 8: ceil(448 / 28) * 28 = 448, ceil(448 / 32) * 32 = 448. Qwen2-VL's min is 3136: kept.


@pytest.mark.parametrize(("family", "height", "width", "size"), [
    ("qwen2_5_vl", 1080, 1920, (560, 1008)),
    ("qwen2_5_vl", 480, 640, (476, 644)),
    ("qwen2_5_vl", 56, 56, (448, 448)),
    ("qwen3_vl", 1080, 1920, (640, 1152)),
    ("qwen3_vl", 480, 640, (480, 640)),
    ("qwen3_vl", 56, 56, (448, 448)),
    ("qwen2_vl", 1080, 1920, (560, 1008)),
    ("qwen2_vl", 480, 640, (476, 644)),
    ("qwen2_vl", 56, 56, (56, 56)),
    ("llava_onevision", 1080, 1920, (384, 384)),
    ("llava_onevision", 56, 56, (384, 384)),
])
def test_frame_size_of_typical_frames_with_32_decoded(family, height, width, size):
    assert frame_size(family, height, width, 32) == size


def test_frame_size_rounds_a_side_half_way_between_multiples_to_the_even_multiple():
    # Python's round: 490 / 28 = 17.5 -> 18 (504), 518 / 28 = 18.5 -> 18 (504), 462 / 28 = 16.5 -> 16 (448).
    assert frame_size("qwen2_5_vl", 490, 644, 32) == (504, 644)
    assert frame_size("qwen2_5_vl", 518, 644, 32) == (504, 644)
    assert frame_size("qwen2_5_vl", 462, 644, 32) == (448, 644)


def test_qwen2_vl_frames_shrink_when_many_are_decoded_together():
    # 360 frames: max = 90316800 / 360 * 2 = 501760 -> shrink by sqrt(2073600 / 501760) = 2.0329:
    #   floor(531.3 / 28) * 28 = 504, floor(944.5 / 28) * 28 = 924.
    # 720 frames: max = 250880 -> shrink by 2.8749: floor(375.7 / 28) * 28 = 364, floor(667.8 / 28) * 28 = 644.
    assert frame_size("qwen2_vl", 1080, 1920, 360) == (504, 924)
    assert frame_size("qwen2_vl", 1080, 1920, 720) == (364, 644)


def test_the_video_budget_never_goes_below_105_percent_of_min_pixels():
    # 10000 frames: 90316800 / 10000 * 2 = 18063 < int(200704 * 1.05) = 210739, so max = 210739 -> shrink by
    # sqrt(2073600 / 210739) = 3.1368: floor(344.3 / 28) * 28 = 336, floor(612.1 / 28) * 28 = 588.
    assert frame_size("qwen2_5_vl", 1080, 1920, 10000) == (336, 588)


def test_frame_size_rejects_frames_more_elongated_than_qwen_vl_utils_accepts():
    with pytest.raises(SaviError, match="too elongated"):
        frame_size("qwen2_5_vl", 10, 2500, 32)


def test_frame_size_rejects_sizes_below_1():
    with pytest.raises(SaviError, match="height"):
        frame_size("qwen3_vl", 0, 640, 32)
