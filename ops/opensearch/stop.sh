#!/usr/bin/env bash
# Stops the node started by start.sh: ops/opensearch/stop.sh --workdir DIR [--timeout 20] (SIGTERM, then SIGKILL).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../service.sh"
exec "$(service_python)" "$here/node.py" stop "$@"
