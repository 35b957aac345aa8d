# vaelab — every command installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install train sweep eval generate test lint format tensorboard bench results clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: install  ## train with the default config (MNIST, MLP VAE); add Hydra overrides in ARGS
	$(BIN)/python src/train.py $(ARGS)

sweep: install  ## Hydra multirun over the latent size
	$(BIN)/python src/train.py -m latent_dim=2,16,64 $(ARGS)

eval: install  ## evaluate a checkpoint: make eval ARGS="ckpt_path=<run>/checkpoints/last.ckpt"
	$(BIN)/python src/eval.py $(ARGS)

generate: install  ## samples to disk: make generate ARGS="ckpt_path=<run>/checkpoints/last.ckpt n=1000"
	$(BIN)/python src/generate.py $(ARGS)

test: install  ## the whole test suite
	$(BIN)/python -m pytest -q $(ARGS)

lint: install
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

tensorboard: install
	$(BIN)/tensorboard --logdir outputs

bench: install  ## time vaelab vs a bare loop and the classic DataLoader pipeline (ARGS="--device cuda" on a GPU)
	$(BIN)/python benchmarks/bench_training.py $(ARGS)

# The results table (docs/results.md): trains and evaluates every row not finished yet under
# outputs/results, one run at a time, copies each evaluated run's metrics and config files to
# docs/results/<row>/ (the records the table is written from), then writes the table (and its copy
# in README.md). Default budget: MNIST rows 100 epochs, CelebA rows 30 epochs, test NLL with
# k = 5000 importance samples on the whole test split; on a 2-core CPU that takes many hours
# (ARGS="--mnist-epochs 20 --n 1000": shorter, and it does not replace records of larger budgets;
# --table-only: record the runs there and rebuild the table; --help for the rest)
results: install  ## the results table: make results ARGS="--only mnist_vae mnist_iwae"
	$(BIN)/python -m vaelab.results --readme README.md $(ARGS)

clean:  ## remove run outputs and caches (keeps the venv and your data)
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache lightning_logs
	find . -name __pycache__ -not -path "./$(VENV)/*" -exec rm -rf {} +
