# rdeic: set up, test, demo, benchmark and train. Every target sets up the venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_IMAGE ?= samples/gb82_city.png
TRAIN_DIR ?= ../shared/data/train
VALID_DIR ?= ../shared/data/valid
WORK ?= ../runs/small
OUT ?= demo-out

.PHONY: setup test demo bench train eval clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

test: setup
	bash tools/install-baselines.sh || echo "baseline codec tools unavailable: their tests will be skipped"
	$(PY) -m pytest -q tests

demo: setup
	mkdir -p $(OUT)
	$(PY) bin/rdeic encode $(DEMO_IMAGE) $(OUT)/demo.rdc --lambda 0.25 --force
	$(PY) bin/rdeic info $(OUT)/demo.rdc
	$(PY) bin/rdeic decode $(OUT)/demo.rdc $(OUT)/demo.png --steps 5 --force
	@echo "reconstruction: $(OUT)/demo.png"
	$(PY) tools/demo_compare.py $(DEMO_IMAGE) $(OUT)/demo.rdc $(OUT)/demo.png -o $(OUT)/compare.png

bench: setup
	$(PY) benchmarks/bench.py

train: setup
	$(PY) bin/rdeic train $(TRAIN_DIR) $(VALID_DIR) --work $(WORK) --profile small-hyperprior -o models/rdeic-small

eval: setup
	bash tools/install-baselines.sh
	$(PY) bin/rdeic eval $(VALID_DIR) --lambda 0.1,0.25,0.5,1,2 --steps 2,5 -o report

clean:
	rm -rf $(VENV) $(OUT) report

# On a CUDA machine: paper-scale speed (float32, --half) beside the paper's RTX 4090 figures, and files
# exchanged between CPU and GPU (benchmarks/gpu_check.py; --dry-run rehearses it on the CPU).
.PHONY: gpu-check
gpu-check: setup
	$(PY) benchmarks/gpu_check.py
