# Two targets a newcomer needs: `make run` and `make test`. Both create .venv on first use
# (with the extras the tests use: dev, data, onnx, openvino and prune).
PYTHON ?= python3
VENV ?= .venv
# The versions served from this machine's local disk (a CUDA build that also runs on CPU).
# On another machine, override: make TORCH_SPEC="torch torchvision" run
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
STAMP := $(VENV)/.hwbench-installed

.PHONY: run test test-slow lint venv clean

# The whole loop on the embedded default (mnist5k): reuse this CPU's profile in profiles/ (or run
# a quick one), pick t_d for 0.67x of the dense p90 latency, co-train against this CPU's
# predicted latency for a fixed wall-clock budget (epochs sized to the machine; lr 0.05 for short
# runs: the reference's 0.3 collapses the features within ~400 steps, measured), deploy, trim on
# the device until the p90, as a ratio to dense measured alongside, lands just under 0.67x, verify
# on real test images, report.
RUN_STAMP := $(shell date +%Y%m%d-%H%M%S)
RUN_OUT ?= results/quickstart-$(RUN_STAMP)
RUN_BUDGET ?= 10min
# the runtime the final network is exported for and verified on: the fastest here for gated
# networks (benchmarks/runtimes.py, docs/runtimes.md)
RUN_RUNTIME ?= openvino

# The report is written even when the target is missed (train exits 4); make exits with the worst
# (largest) of train's and the final verify's codes (verify's is kept through the tee).
# Then the final network (trimmed, else deployed) is exported to ONNX, its equality checked on ONNX
# Runtime and OpenVINO (a failed check fails make), and verified on RUN_RUNTIME (recorded beside it).
run: $(STAMP)
	$(BIN)/hwbench train --dataset mnist5k --time-budget $(RUN_BUDGET) --budget latency \
		--sparsity-on deployed --target-latency 0.67x --target-device cpu --out $(RUN_OUT); rc=$$?; \
	if [ -f $(RUN_OUT)/summary.json ]; then \
		$(BIN)/hwbench report $(RUN_OUT) --out $(RUN_OUT)/report || exit $$?; fi; \
	net=$(RUN_OUT)/trim-0.67x; [ -d $$net ] || net=$(RUN_OUT)/deployed; \
	if [ -f $$net/checkpoint.pt ]; then \
		$(BIN)/hwbench export $$net --out $(RUN_OUT)/export --check-on onnxruntime,openvino \
			|| exit $$?; \
		{ $(BIN)/hwbench verify --pattern $$net/pattern.json --checkpoint $$net/checkpoint.pt \
			--target-latency 0.67x --runtime $(RUN_RUNTIME); echo $$? > $(RUN_OUT)/.verify_rc; } \
			| tee $(RUN_OUT)/verify_$(RUN_RUNTIME).txt; \
		vrc=$$(cat $(RUN_OUT)/.verify_rc); rm -f $(RUN_OUT)/.verify_rc; \
		if [ "$$vrc" -gt "$$rc" ]; then rc=$$vrc; fi; \
	fi; exit $$rc

# `make test`: every test not marked slow (minutes); `make test-slow`: the slow ones (long
# end-to-end runs, real profiles, the report's inputs; most of an hour on a 2-core CPU). CI runs
# both (.ci/run). GPU checks run only from scripts/gpu_check.sh.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check hwbench tests benchmarks

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q --no-compile $(TORCH_SPEC)
	$(BIN)/pip install -q --no-compile -e '.[dev,data,onnx,openvino,prune]'
	@# byte-compile on both cores (pip compiles on one: ~40 s more on a 2-core machine); a file that
	@# does not compile (a package's test data) is left to import time, as pip leaves it
	$(BIN)/python -m compileall -qq -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || true
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
