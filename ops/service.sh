#!/usr/bin/env bash
# Sourced by ops/kafka/{start,stop}.sh and ops/opensearch/{start,stop}.sh: the Python that runs a JVM service's CLI.
# service_python [--create-venv] prints $PYTHON if set, else the repo's .venv/bin/python, else python3; with
# --create-venv, .venv is first created (or refreshed when older than pyproject.toml) by ops/venv.sh, which
# prints its progress on stderr, and python3 is never used.
service_python() {
  local ops
  ops="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  if [[ -n "${PYTHON:-}" ]]; then
    echo "$PYTHON"
  elif [[ "${1:-}" == --create-venv ]]; then
    (source "$ops/venv.sh") >&2 || return 1  # the caller's py="$(...)" then fails under set -e
    echo "$ops/../.venv/bin/python"
  elif [[ -x "$ops/../.venv/bin/python" ]]; then
    echo "$ops/../.venv/bin/python"
  else
    echo python3
  fi
}
