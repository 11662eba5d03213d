#!/usr/bin/env bash
# Creates .venv (when missing or older than what it was built from) and installs hostaudit with its test extras.
# Sourced by ops/hostaudit and ops/test.sh; leaves the repository root as the working directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Installed again when pyproject.toml, setup.py or a C source changed (the editable install builds the C
# speed-ups in place).
stale=""
for source in pyproject.toml setup.py actors/datasets/package/_dpkg_native.c actors/datasets/process/_capture_native.c; do
  if [ -e .venv/.installed ] && [ "$source" -nt .venv/.installed ]; then stale=yes; fi
done
if [ ! -x .venv/bin/python ] || [ ! -e .venv/.installed ] || [ -n "$stale" ]; then
  echo "--- creating .venv and installing hostaudit[test]" >&2
  "${PYTHON:-python3}" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -U pip >&2
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' >&2
  touch .venv/.installed
fi
