#!/usr/bin/env bash
# Starts a daemonized one-node OpenSearch: ops/opensearch/start.sh --workdir DIR [--port N] [--timeout 120]
# Prints http://127.0.0.1:PORT once the node printed its ready line and _cluster/health says yellow.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../service.sh"
# node.py needs only the standard library: $PYTHON if set, else the repo's .venv, else python3.
exec "$(service_python)" "$here/node.py" start "$@"
