#!/usr/bin/env bash
# Creates .venv (when missing or older than pyproject.toml) and installs hostaudit with its test extras.
# Sourced by ops/hostaudit and ops/test.sh; leaves the repository root as the working directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "--- creating .venv and installing hostaudit[test]" >&2
  "${PYTHON:-python3}" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -U pip >&2
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' >&2
  touch .venv/.installed
fi
