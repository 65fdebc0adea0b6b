# AnsFlow: `make run` serves the app with a worker; `make test` runs the whole suite.
# Both do the whole set-up on a fresh machine with Python 3.11+ (venv, requirements, migrations).
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && { echo $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
FLASK := $(PY) -m flask --app wsgi
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)

.PHONY: run test setup migrate chromium bubblewrap postgres-server bench bench-quick soak clean

$(STAMP): requirements.txt
	@test -n "$(PYTHON)" || { echo "AnsFlow needs Python 3.11 or newer on PATH."; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

setup: $(STAMP) migrate

migrate: $(STAMP)
	$(FLASK) db upgrade

run: setup
	$(FLASK) seed-demo
	$(FLASK) dev

# Debian's Chromium drives the browser tests (a test tool's own browser download cannot work here).
chromium:
	@if ! command -v chromium >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "Installing Debian's chromium package for the browser tests..."; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "The browser tests need Chromium: run 'sudo apt-get install chromium' (or set CHROMIUM_PATH)."; exit 1; \
		fi; \
	fi

# bubblewrap sandboxes shell steps (README "Step sandbox"); without it the suite tests the levels it has.
bubblewrap:
	@if ! command -v bwrap >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "Installing Debian's bubblewrap package for the step sandbox..."; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null 2>&1; } || \
		echo "bubblewrap could not be installed: the sandbox tests run the other levels."; \
	fi

# The database-outage test (tests/reliability) starts and stops a PostgreSQL of its own: Debian's server
# binaries (initdb, pg_ctl), installed without the package's own cluster or service.
postgres-server:
	@if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "Installing Debian's postgresql server binaries for the database-outage test..."; \
			mkdir -p /etc/postgresql-common; \
			grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf || \
				echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf; \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
				echo "postgresql could not be installed: the database-outage test will fail and say why."; \
		else \
			echo "The database-outage test needs PostgreSQL's server binaries: run 'sudo apt-get install postgresql'."; \
		fi; \
	fi

test: setup chromium bubblewrap postgres-server
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench

# The reliability scenarios (tests/reliability) longer and with more executions, printing their figures.
soak: setup
	ANSFLOW_SOAK=$${ANSFLOW_SOAK:-4} $(PY) -m pytest tests/reliability -s -p no:cacheprovider

bench-quick: setup
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) instance .pytest_cache
