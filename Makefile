# Two commands do all the set-up: `make run` and `make test` (see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install bench

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

# Development defaults: DEBUG on, everything else embedded (SQLite, a folder
# as Celery broker, console mail, keys generated under var/).
.env:
	printf 'DEBUG=true\n' > .env

run: $(STAMP) .env
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py load_demo_data
	@echo
	@echo "Admin: http://127.0.0.1:8000/admin/   (Ctrl-C stops web, worker and beat)"
	@echo
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/honcho start

test: $(STAMP) .env
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
