# Two commands do all the set-up: `make run` and `make test` (see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-dates lint install bench messages messages-update

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

# The test OpenID provider (tests/oidc_provider: node's oidc-provider, for the
# SSO tests), installed from its lock file; needs node and the npm registry
# once, then nothing. Without node the SSO tests skip (CI fails instead).
OIDC_PROVIDER := tests/oidc_provider/node_modules/.installed
$(OIDC_PROVIDER): tests/oidc_provider/package.json tests/oidc_provider/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix tests/oidc_provider --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the SSO tests will skip (install Node.js 20+ to run them)"; fi

# The customer's languages (locale/<ll_CC>/LC_MESSAGES/django.po, settings.LANGUAGES)
# compiled to the .mo files Django reads; the .mo files are build output, not in git.
# Needs GNU gettext's msgfmt (apt-get install gettext). After changing a customer
# text: `make messages-update`, translate the new entries, commit the .po files.
MO_FILES := $(patsubst %.po,%.mo,$(wildcard locale/*/LC_MESSAGES/django.po))
locale/%/LC_MESSAGES/django.mo: locale/%/LC_MESSAGES/django.po
	msgfmt --check -o $@ $<
messages: $(MO_FILES)
messages-update: $(STAMP)
	$(BIN)/python manage.py makemessages -l fr_CA -l es -e html,txt,py --no-wrap --no-obsolete \
	  --ignore='.venv/*' --ignore='*/node_modules/*' --ignore='tests/*' --ignore='var/*' --ignore='staticfiles/*' \
	  --ignore='templates/admin/*' --ignore='templates/security/*' --ignore='templates/staffsso/*' \
	  --ignore='devtools/*' --ignore='bench/*' --ignore='docs/*'

# axe-core for the accessibility tests (tests/a11y: its axe.min.js is injected
# into Chromium pages from Python), installed the same way from its lock file.
# Without node the accessibility tests skip (CI fails instead).
AXE_CORE := tests/a11y/node_modules/.installed
$(AXE_CORE): tests/a11y/package.json tests/a11y/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix tests/a11y --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the accessibility tests will skip (install Node.js 20+ to run them)"; fi

install: $(STAMP) $(OIDC_PROVIDER) $(AXE_CORE) messages

# Development defaults: DEBUG on, everything else embedded (SQLite, a folder
# as Celery broker, console mail, keys generated under var/), and keys checked
# against the fake CD2 gateway on loopback (with DEBUG on, CD2_API_URL defaults
# to http://127.0.0.1:$CD2_PORT), never Instructure's real one.
.env:
	printf 'DEBUG=true\n' > .env

# WEB_PORT and CD2_PORT (environment) move the web server, the fake gateway,
# SITE_URL and CD2_API_URL together (edpotential/settings.py derives both).
# honcho reads no .env (-e /dev/null): its .env would win over the environment,
# while Django reads .env itself and lets the environment win. A .env an older
# `make run` wrote pinned CD2_API_URL to port 8765: that line is dropped.
run: $(STAMP) .env messages
	@sed -i '/^CD2_API_URL=http:\/\/127\.0\.0\.1:8765$$/d' .env
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py load_demo_data
	@echo
	@echo "Admin: $${SITE_URL:-http://127.0.0.1:$${WEB_PORT:-8000}}/admin/   (Ctrl-C stops web, worker, beat and the fake CD2 gateway on port $${CD2_PORT:-8765})"
	@echo "A submission link: $(BIN)/python manage.py create_submission_link northfield-university"
	@echo "A key the fake gateway accepts: $(BIN)/python manage.py demo_key lakeside-college"
	@echo "Start the demo afresh: $(BIN)/python manage.py load_demo_data --reset"
	@echo
	@# Keys are checked against the fake CD2 gateway (Procfile.dev "cd2", which accepts exactly the
	@# passing demo keys load_demo_data lists in var/fake-gateway-keys.txt) unless CD2_API_URL is set.
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho -f Procfile.dev -e /dev/null start

# One pytest-xdist worker per core; tests/settings.py gives each its own var/
# folder and Redis databases. loadgroup keeps tests marked with the same
# xdist_group on one worker.
TEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup
# Bytecode is written even where the environment says not to (PYTHONDONTWRITEBYTECODE=1,
# as on this machine): otherwise every worker rewrites the assertions of every test
# module again (3.7 s of 6.6 s collecting) and every process the tests start compiles
# the project again. An empty value counts as unset for Python.
test test-dates: export PYTHONDONTWRITEBYTECODE =
test: $(STAMP) $(OIDC_PROVIDER) $(AXE_CORE) .env messages
	$(PYTEST)

# The suite again with the wall clock of every Python process moved
# (tests/clock/sitecustomize.py): a new year in UTC that is still the old one
# west of it, 29 February, and a Sunday of a DST change in America. Each date
# runs even when an earlier one fails; the exit status says if any did.
TEST_DATES ?= 2027-01-01T00:30:00Z 2028-02-29T12:00:00Z 2027-03-14T07:30:00Z
test-dates: $(STAMP) $(OIDC_PROVIDER) $(AXE_CORE) .env messages
	@failed=""; for at in $(TEST_DATES); do \
	  echo "== make test with every clock at $$at"; \
	  PYTHONPATH="$(abspath tests/clock)$${PYTHONPATH:+:$$PYTHONPATH}" CLOCK_AT=$$at $(PYTEST) -q || failed="$$failed $$at"; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED at:$$failed" >&2; exit 1; fi

lint: $(STAMP)
	$(BIN)/ruff check .

# Benchmarks (not tests): needs PostgreSQL and Redis on 127.0.0.1 and wrk
# (apt-get install wrk). Updates the current table in bench/RESULTS.md and puts
# the run's full log on top of bench/HISTORY.md.
BENCH_INSTITUTIONS ?= 10000 100000
bench: $(STAMP)
	$(BIN)/python bench/run.py --institutions $(BENCH_INSTITUTIONS)
