# linewatch: the two set-up commands are `make demo` and `make test`; each makes .venv if missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
STAMP  := $(VENV)/.installed
DEPS   := pyproject.toml constraints.txt requirements-runtime.txt requirements-train.txt requirements-test.txt requirements-scale.txt requirements-nodeps.txt

.PHONY: demo test test-all venv clean help bench-ablation bench-few-shot bench-paper bench-accuracy bench-peers-venv bench-latency bench-robustness bench-service bench-soak bench-scale bench-adapt bench-augment bench-suite bench-suite-quick

help:
	@echo "make demo      build the demo textures, train, inspect, print accuracy (creates .venv)"
	@echo "make test      run the test suite without the slow end-to-end tests (creates .venv)"
	@echo "make test-all  the whole suite, slow tests included"
	@echo "make bench-accuracy  linewatch vs baselines vs anomalib (builds the anomalib env in bench/peers/.venv)"
	@echo "make bench-suite     linewatch as shipped vs baselines and anomalib on 14 categories (bench/results/suite.md)"
	@echo "make bench-suite-quick  the same on small data, without anomalib, <= 10 min (/tmp/lw-suite-quick/suite.md)"
	@echo "make bench-ablation / bench-few-shot / bench-paper   re-measure bench/results/*.md"
	@echo "make bench-adapt     few-shot adaptation vs no adaptation vs retraining (bench/results/adapt.md)"
	@echo "make bench-scale     archive scoring images/s, one process vs Ray workers (bench/results/scale.md)"
	@echo "make bench-latency   latency, throughput, cold start, size vs torch, anomalib and the floor (bench/results/latency.md)"
	@echo "make bench-robustness  bad images and damaged/tampered bundles and what linewatch does (bench/results/robustness.md)"
	@echo "make bench-service   linewatch serve under load at concurrency 1, 4, 16 (bench/results/service.md)"
	@echo "make bench-soak      linewatch serve for 10 minutes at 20 requests/s: errors, p99, RSS growth (bench/results/soak.md)"

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch is pinned through constraints.txt (the 2.13.0 CPU wheel); the three --no-deps packages
# declare dependencies they never import (see requirements-train.txt). The `scale` extra (Ray core) is
# installed because the default suite checks the Ray engines against the single-process ones
# (tests/test_scale.py, skipped where ray is absent).
$(STAMP): $(PY) $(DEPS)
	$(PIP) install -q -c constraints.txt -e '.[train,test,scale]'
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/linewatch demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

# Archive scoring images/s: one process vs Ray with 1 and 2 workers, and the identical-results check.
bench-scale: $(STAMP)
	$(PY) bench/scale.py

bench-ablation: $(STAMP)
	$(PY) bench/ablation.py

bench-few-shot: $(STAMP)
	$(PY) bench/few_shot.py

bench-adapt: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) bench/adapt.py

bench-paper: $(STAMP)
	$(PY) bench/paper.py

bench-augment: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) bench/augment.py

# anomalib runs in an environment of its own (about 1.9 GB), never in .venv; torch pinned there too.
PEER_VENV  := bench/peers/.venv
PEER_STAMP := $(PEER_VENV)/.installed
$(PEER_STAMP): bench/peers/requirements.txt constraints.txt
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -r bench/peers/requirements.txt
	touch $(PEER_STAMP)

bench-peers-venv: $(PEER_STAMP)

bench-accuracy: $(STAMP) $(PEER_STAMP)
	$(PY) bench/accuracy.py

# 14 categories (7 DEV, 7 CONFIRM; data built by bench/suite_data.py and cached in /tmp/lw-suite-data).
bench-suite: $(STAMP) $(PEER_STAMP)
	$(PY) bench/suite.py

bench-suite-quick: $(STAMP)
	$(PY) bench/suite.py --quick

# Run it on an otherwise idle machine: every configuration is timed in its own pinned process.
bench-latency: $(STAMP) $(PEER_STAMP)
	$(PY) bench/latency.py

# Trains two small bundles (about a minute), then rewrites the generated tables of robustness.md.
bench-robustness: $(STAMP)
	$(PY) bench/robustness.py

# linewatch serve in its own process, loaded from client threads; both want an otherwise idle machine.
bench-service: $(STAMP)
	$(PY) bench/service.py

# not in CI: 10 minutes at a fixed rate; targets zero errors and RSS growth <= 5 %
SOAK_SECONDS ?= 600
SOAK_RATE    ?= 20
bench-soak: $(STAMP)
	$(PY) bench/soak.py --duration $(SOAK_SECONDS) --rate $(SOAK_RATE)

clean:
	rm -rf $(VENV) demo-output .pytest_cache
