# The two commands of the README: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
NETNS  := scripts/netns-run

.PHONY: demo test setup clean
setup: $(VENV)/.installed

# torch is pinned to the CPU wheel here; the package itself only asks for a range.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(NETNS) $(BIN)/brainformer-rt demo $(ARGS)

test: setup
	$(NETNS) $(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
