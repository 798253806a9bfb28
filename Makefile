# medseg: the two set-up commands (both create .venv and install everything first)
#   make demo   generate the demo dataset and run the workflow on it
#   make test   lint and run the test suite (what CI runs)
#   make demo-cascade   the cascade demo (all four configurations, ~15 min on 2 cores)

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA := demo_data/MedsegDemo
CASCADE_DATA := demo_data/MedsegCascadeDemo
# pip on machines with an extra local index prints one warning per package; hide those
PIP_FILTER := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: demo demo-cascade test test-fast lint venv clean tools

venv: $(STAMP)

# torch first, pinned: otherwise nnunetv2 -> timm -> torchvision pulls a newer CUDA torch
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 2>&1 | $(PIP_FILTER)
	$(BIN)/pip install --quiet torch==2.13.0 2>&1 | $(PIP_FILTER)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]' 2>&1 | $(PIP_FILTER)
	$(BIN)/python -c "import medseg, torch; print('medseg', medseg.__version__, '/ torch', torch.__version__)"
	touch $@

$(DEMO_DATA)/dataset.json: datasets/demo.py | $(STAMP)
	$(BIN)/python datasets/demo.py $(DEMO_DATA) --force

demo: $(STAMP) $(DEMO_DATA)/dataset.json
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile pipelines/profiles/local \
		--cores 2 --configfile pipelines/config/demo.yaml

# the cascade demo: larger CT-like cases, all four configurations incl. 3d_cascade_fullres
$(CASCADE_DATA)/dataset.json: datasets/cascade_demo.py datasets/demo.py | $(STAMP)
	$(BIN)/python datasets/cascade_demo.py $(CASCADE_DATA) --force

demo-cascade: $(STAMP) $(CASCADE_DATA)/dataset.json
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile pipelines/profiles/local \
		--cores 2 --configfile pipelines/config/demo_cascade.yaml

# dciodvfy (Debian's dicom3tools) validates the DICOM-SEG and RTSTRUCT files in the tests;
# plastimatch (Debian's plastimatch) reads the RTSTRUCT back into masks, independently of medseg
tools:
	@set -e; for tool in dciodvfy:dicom3tools plastimatch:plastimatch; do \
		cmd=$${tool%%:*}; pkg=$${tool#*:}; \
		command -v $$cmd >/dev/null && continue; \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get install -y -qq $$pkg >/dev/null 2>&1 || \
			{ apt-get update -qq && apt-get install -y -qq $$pkg >/dev/null; }; \
		elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
			sudo apt-get install -y -qq $$pkg >/dev/null; \
		else \
			echo "note: install $$pkg ($$cmd) to run the DICOM-SEG and RTSTRUCT checks"; \
		fi; \
	done

# Debian's slurm-wlm + munge: the one-node SLURM test cluster of tests/slurm_cluster.py
# (tests/test_slurm.py starts its own; slurm-up / slurm-down one for trying the slurm
# profile by hand: needs root, everything in SLURM_DIR, nothing in /etc)
SLURM_PACKAGES := slurm-wlm munge
SLURM_DIR ?= /tmp/medseg-slurm
.PHONY: slurm-tools slurm-up slurm-down
slurm-tools:
	@missing=; for t in sbatch srun squeue scontrol munge slurmctld slurmd munged; do \
		PATH="$$PATH:/usr/sbin:/sbin" command -v $$t >/dev/null || missing=1; done; \
	[ -z "$$missing" ] || { \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get install -y -qq --no-install-recommends $(SLURM_PACKAGES) >/dev/null 2>&1 || \
			{ apt-get update -qq && \
			  apt-get install -y -qq --no-install-recommends $(SLURM_PACKAGES) >/dev/null; }; \
		elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
			sudo apt-get install -y -qq --no-install-recommends $(SLURM_PACKAGES) >/dev/null; \
		else \
			echo "note: install slurm-wlm and munge (SLURM 22.05+) to run the SLURM tests"; \
		fi; }

slurm-up: slurm-tools
	$(PYTHON) tests/slurm_cluster.py up $(SLURM_DIR)

slurm-down:
	$(PYTHON) tests/slurm_cluster.py down $(SLURM_DIR)

# Debian's orthanc + orthanc-dicomweb: the private PACS of tests/orthanc_server.py (the
# tests start their own, with their own config and ports; /etc/orthanc is never read;
# where systemd runs, Debian also starts a system Orthanc on 4242/8042: ours avoids those)
ORTHANC_PACKAGES := orthanc orthanc-dicomweb
.PHONY: orthanc-tools
orthanc-tools:
	@PATH="$$PATH:/usr/sbin:/sbin" command -v Orthanc >/dev/null && \
	[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || { \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get install -y -qq --no-install-recommends $(ORTHANC_PACKAGES) >/dev/null 2>&1 || \
			{ apt-get update -qq && \
			  apt-get install -y -qq --no-install-recommends $(ORTHANC_PACKAGES) >/dev/null; }; \
		elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then \
			sudo apt-get install -y -qq --no-install-recommends $(ORTHANC_PACKAGES) >/dev/null; \
		else \
			echo "note: install orthanc and orthanc-dicomweb to run the PACS tests"; \
		fi; }

lint: $(STAMP)
	$(BIN)/ruff check medseg tests datasets benchmarks
	$(BIN)/ruff format --check medseg tests datasets benchmarks

test: lint tools slurm-tools orthanc-tools
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -x -q

# the lent-GPU kit (benchmarks/gpu/README.md): wheels the GPU machine lacks + prepared data
.PHONY: gpu-kit
gpu-kit: $(STAMP)
	$(BIN)/python benchmarks/gpu/build_kit.py --out benchmarks/gpu/kit

clean:
	rm -rf $(VENV) demo_data results .snakemake .pytest_cache
