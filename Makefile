# One-word developer commands. `make run` and `make test` are all a newcomer needs.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: run test test-fast lint typecheck fmt bench install messages screenshots clean

# Creates .venv and installs everything once; again only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[engine,dev]'
	# Only for the CLIP tokenizer vocabulary file it ships; its dependencies (torchvision,
	# timm) would break diffusers beside the CPU torch, so they are left out on purpose.
	$(PY) -m pip install --quiet --no-deps open-clip-torch==3.3.0
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) manage.py runplatform

# The tests run on 2 pytest-xdist workers, a test file on one worker (`XDIST=` runs them in one
# process). Worker i uses Redis database N+i of REDIS_URL=redis://.../N and a test database of
# its own; a plain test that follows a transactional one's flush gets the seeded tiers back
# (tests/conftest.py). On the 2-core machine the suite takes about 0.7 of its one-process time.
XDIST ?= -n 2 --dist loadfile

# The whole suite, with a private Redis unless REDIS_URL is set (CI sets it and DATABASE_URL).
test: $(VENV)/.installed
	$(PY) -m operations.with_redis -- $(PY) -m pytest $(XDIST)

# Without the browser tests, the fault drills and the real-worker (engine) tests: minutes, not a
# quarter hour. The drills and browser tests run their platform and real GPU workers on SQLite.
test-fast: $(VENV)/.installed
	$(PY) -m operations.with_redis -- $(PY) -m pytest $(XDIST) -m "not browser and not drill and not engine"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run
	$(MAKE) --no-print-directory typecheck

# mypy with the Django and DRF plugins over every package, tests and benches ([tool.mypy]).
typecheck: $(VENV)/.installed
	$(PY) -m mypy

fmt: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.installed
	for b in bench/bench_*.py; do $(PY) -m operations.with_redis -- $(PY) $$b || exit 1; done

# The README's screenshots, from the live platform with the demo model (needs chromium).
screenshots: $(VENV)/.installed
	ATELIER_SCREENSHOTS_DIR=docs/screenshots $(PY) -m operations.with_redis -- \
		$(PY) -m pytest tests/e2e/test_readme_screenshots.py -q

# Rebuild translation catalogues after changing user-facing strings.
messages: $(VENV)/.installed
	$(PY) manage.py makemessages -l zh_Hans --ignore=.venv --ignore=tests --ignore=bench
	$(PY) manage.py makemessages -d djangojs -l zh_Hans --ignore=.venv --ignore=staticfiles
	$(PY) manage.py compilemessages --ignore=.venv

clean:
	rm -rf $(VENV) var staticfiles
