# Two commands on a fresh machine:  `make demo` (set up + train + evaluate)  and  `make test`.
VENV       ?= .venv
PYTHON     := $(VENV)/bin/python
DATA_ROOT  ?= Dataset
OUTPUT_DIR ?= outputs
# Faiss build: auto (gpu when nvidia-smi lists a GPU, else cpu), cpu or gpu. An installed GPU build
# is kept whatever this says (scripts/faiss_extra.sh).
FAISS      ?= auto
export DATA_ROOT OUTPUT_DIR PYTHON

.PHONY: install data train evaluate baseline demo test bench clean

$(PYTHON):
	python3 -m venv $(VENV)

# Reinstalled whenever the dependency list or FAISS changes. Going to the GPU build removes
# faiss-cpu first: both wheels own the module faiss, and one installed over the other breaks it.
$(VENV)/.installed-faiss-$(FAISS): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install --upgrade pip
	extra=$$(FAISS=$(FAISS) PYTHON=$(PYTHON) sh scripts/faiss_extra.sh) && \
	if [ "$$extra" = gpu ]; then $(PYTHON) -m pip uninstall -y faiss-cpu; fi && \
	$(PYTHON) -m pip install -e ".[dev$${extra:+,$$extra}]"
	touch $@

install: $(VENV)/.installed-faiss-$(FAISS)

data: install
	@test -e $(DATA_ROOT) || $(PYTHON) -m real20m.datasets.synthetic --out $(DATA_ROOT) --seed 0

train: data
	sh train.sh

evaluate: install
	sh video2goods_evaluate.sh
	sh goods2video_evaluate.sh
	sh query2goods_evaluate.sh
	sh query2video_evaluate.sh

# The untrained model through the same pipeline, into a separate output folder.
baseline: data
	CKPT=init OUTPUT_DIR=$(OUTPUT_DIR)/baseline sh video2goods_evaluate.sh
	CKPT=init OUTPUT_DIR=$(OUTPUT_DIR)/baseline sh goods2video_evaluate.sh
	CKPT=init OUTPUT_DIR=$(OUTPUT_DIR)/baseline sh query2goods_evaluate.sh
	CKPT=init OUTPUT_DIR=$(OUTPUT_DIR)/baseline sh query2video_evaluate.sh

demo: train evaluate

test: install
	$(PYTHON) -m pytest

bench: install
	$(PYTHON) benchmarks/bench_annotations.py --lines 2000000
	$(PYTHON) benchmarks/bench_loader.py
	$(PYTHON) benchmarks/bench_train.py
	$(PYTHON) benchmarks/bench_eval.py
	$(PYTHON) benchmarks/bench_eval_guard.py
	$(PYTHON) benchmarks/bench_scale.py --gallery 1000000 --subset 200000

clean:
	rm -rf $(OUTPUT_DIR)
