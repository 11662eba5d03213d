#!/usr/bin/env bash
# Starts a daemonized one-node OpenSearch: ops/opensearch/start.sh --workdir DIR [--port N] [--timeout 120]
# Prints http://127.0.0.1:PORT once the node printed its ready line and _cluster/health says yellow.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# node.py needs only the standard library: $PYTHON if set, else the repo's .venv, else python3.
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$here/../../.venv/bin/python" ]]; then py="$here/../../.venv/bin/python"; else py=python3; fi
fi
exec "$py" "$here/node.py" start "$@"
