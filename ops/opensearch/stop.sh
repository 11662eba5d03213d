#!/usr/bin/env bash
# Stops the node started by start.sh: ops/opensearch/stop.sh --workdir DIR [--timeout 20] (SIGTERM, then SIGKILL).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$here/../../.venv/bin/python" ]]; then py="$here/../../.venv/bin/python"; else py=python3; fi
fi
exec "$py" "$here/node.py" stop "$@"
