#!/usr/bin/env bash
# Starts a daemonized single-node Kafka broker: ops/kafka/start.sh --workdir DIR [--port N] [--ssl] [--ssl-port N]
# Prints the bootstrap address (127.0.0.1:PORT) once the broker answers a metadata request.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$here/../../.venv/bin/python" ]]; then py="$here/../../.venv/bin/python"; else py=python3; fi
fi
exec "$py" "$here/broker.py" start "$@"
