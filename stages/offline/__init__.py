"""What savi builds instead of downloading: generated videos, benchmark files in their published layouts, tiny
random models of the real families and a tiny CLIP. `savi demo`, `savi tiny-model`, `savi tiny-clip`, the tests and
the benchmark scripts use them; no stage does."""
