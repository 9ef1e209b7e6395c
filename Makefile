# The two commands of the README: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
NETNS  := scripts/netns-run

.PHONY: demo test setup clean
setup: $(VENV)/.installed

# torch is pinned to the CPU wheel here; the package itself only asks for a range. The installers'
# output goes to a log, shown only when something fails.
SETUP_LOG := .venv-setup.log
$(VENV)/.installed: pyproject.toml
	@echo "setting up $(VENV): Python packages for brainformer (first run only, about a minute; log in $(SETUP_LOG))"
	@( $(PYTHON) -m venv $(VENV) \
	   && $(BIN)/pip install --upgrade pip \
	   && $(BIN)/pip install torch==2.13.0 \
	   && $(BIN)/pip install -e '.[dev]' ) > $(SETUP_LOG) 2>&1 \
	   || { tail -n 30 $(SETUP_LOG); echo "set-up failed; full log in $(SETUP_LOG)"; exit 1; }
	@touch $@

demo: setup
	$(NETNS) $(BIN)/brainformer-rt demo $(ARGS)

# Two workers, one test file each at a time: most tests wait on streams played at the real rate,
# so two overlap well on two cores (8.4 against 12.7 minutes); a file's daemons and fixtures stay
# in one worker. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: setup
	$(NETNS) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

clean:
	rm -rf $(VENV) $(SETUP_LOG) build *.egg-info
