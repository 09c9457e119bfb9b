# Set-up and everyday commands. Every target installs what it needs first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-appliance
# Debian packages the tests and benchmarks drive for real.
APT_PACKAGES := tmux zstd age nfs-ganesha nfs-ganesha-vfs mariadb-server mariadb-client mariadb-backup galera-4 rsync prometheus openssh-server openssh-client
APT_COMMANDS := tmux zstd age ganesha.nfsd mariadbd mariadb mariadb-install-db mariadb-backup mbstream rsync promtool ssh /usr/sbin/sshd
APT_FILES := /usr/lib/galera/libgalera_smm.so
PYTEST_ARGS ?=

.PHONY: all venv sysdeps lint test demo bench clean

all: test

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Our packages' bytecode, as an installed package has it: where PYTHONDONTWRITEBYTECODE is set
# (this CI machine), every start of the console or the command compiled them again (about 35 ms).
venv: $(STAMP)
	@$(PY) -m compileall -q backup tui screens widgets

sysdeps:
	@missing=""; for c in $(APT_COMMANDS); do PATH="$$PATH:/usr/sbin" command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	for f in $(APT_FILES); do [ -e $$f ] || missing="$$missing $$f"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages (missing:$$missing)"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

# The checks that keep the code as it is specified: style and bugs (ruff), types (mypy), the layering
# tui -> screens -> widgets -> backup and the core free of Textual (import-linter; pyproject.toml).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: venv sysdeps
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

demo: venv
	@[ -f $(DEMO_DIR)/config.toml ] || $(VENV)/bin/appliance-backup demo $(DEMO_DIR)
	$(VENV)/bin/appliance-backup --config $(DEMO_DIR)/config.toml

bench: venv sysdeps
	$(PY) bench/backup_vs_peers.py
	$(PY) bench/console.py
	$(PY) bench/wire.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis $(DEMO_DIR) bench/out
