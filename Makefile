# make demo   run savi offline on generated videos with a tiny model (sets itself up)
# make test   run the test suite (sets itself up)
# make venv   create .venv with pip if it is missing (or if pyproject.toml changed)
# make proof   one round in a world whose truth is known, judged four ways, over 3 seeds (about 46 min on 2 quiet cores);
#              writes the table to docs/FIDELITY.md
# make bench-ceilings   the machine-dependent ceilings that are not tests: CLIP's offline failure time, and the
#                       peak memory of sampling a huge video (each script exits 1 above its ceiling)

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench bench-ceilings proof clean

venv: $(STAMP)

# pip, not uv or poetry: the large torch wheels are served from this machine's local pip configuration.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/savi demo --dir demo

test: venv
	$(VENV)/bin/pytest -q

lint: venv
	$(VENV)/bin/ruff check savi_cli stages tests benchmarks

bench: venv
	$(VENV)/bin/python benchmarks/bench_sample.py

proof: venv
	$(VENV)/bin/python benchmarks/proof_round.py --seeds 0 1 2 --out docs/FIDELITY.md

bench-ceilings: venv
	$(VENV)/bin/python benchmarks/bench_clip_offline_failure_time.py
	$(VENV)/bin/python benchmarks/bench_huge_video_peak_memory.py

clean:
	rm -rf demo .pytest_cache
