# The two commands that matter:  make up    (build the images, install the stack from its offline
#                                           package, print a sample prediction made through nginx)
#                                make test  (set up, run the test suite; CI runs it, then make e2e)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := cpu,torch,dicom,quantize,report,test,bench
MODELS_DIR ?= models
SAMPLES ?= ../shared/data
BUNDLES := $(MODELS_DIR)/cxr10/manifest.json $(MODELS_DIR)/cxr25/manifest.json $(MODELS_DIR)/chestxray14/manifest.json
PYTEST_MARKERS ?= not e2e and not gpu

.PHONY: setup bundles vendor-js demo up down test e2e bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[$(EXTRAS)]'
	touch $@

bundles: $(BUNDLES)

# The browser pages' JavaScript, fetched at build time at pinned versions and hashes (requirements/js-packages.txt).
VENDOR_JS := chexnet/api/vendor/chart.umd.min.js
vendor-js: $(VENDOR_JS)
$(VENDOR_JS): requirements/js-packages.txt scripts/vendor-js.sh
	PYTHON=$(PYTHON) scripts/vendor-js.sh

$(MODELS_DIR)/%/manifest.json: | setup
	CALIBRATION=$(SAMPLES)/nih PYTHON=$(PY) scripts/demo-bundles.sh $(MODELS_DIR) $*

demo: bundles
	$(PY) -m chexnet predict --bundle $(MODELS_DIR)/cxr10 --heatmaps-dir out/heatmaps --json \
		$(SAMPLES)/nih/00000100_000.png $(SAMPLES)/dicom/RG1_J2KR.dcm $(SAMPLES)/dicom/RG3_JPLY.dcm

up: setup
	scripts/dev-up.sh

down:
	cd build/dev-site && (docker compose down 2>/dev/null || docker-compose down)

test: setup $(VENDOR_JS)
	$(PY) -m pytest -m "$(PYTEST_MARKERS)"

# Needs Docker and root: images, offline package, install, QA script, faults, GPU image on CPU.
e2e: setup
	test/e2e.sh

bench: bundles
	$(PY) bench/inference.py --models-dir $(MODELS_DIR) --samples $(SAMPLES)/nih --write BENCHMARKS.md
	$(PY) bench/http_load.py --models-dir $(MODELS_DIR) --samples $(SAMPLES)/nih --write BENCHMARKS.md
	$(PY) bench/dicom_syntaxes.py --models-dir $(MODELS_DIR) --samples $(SAMPLES)/dicom --write BENCHMARKS.md
	$(PY) bench/decode_memory.py --models-dir $(MODELS_DIR) --samples $(SAMPLES) --write BENCHMARKS.md
	$(PY) bench/request_cost.py --models-dir $(MODELS_DIR) --samples $(SAMPLES) --write BENCHMARKS.md

clean:
	rm -rf $(VENV) $(MODELS_DIR) out build dist .pytest_cache
