#!/usr/bin/env bash
# Starts a daemonized single-node Kafka broker: ops/kafka/start.sh --workdir DIR [--port N] [--ssl] [--ssl-port N]
# Prints the bootstrap address (127.0.0.1:PORT) once the broker answers a metadata request.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../service.sh"
# The readiness check needs kafka-python: without $PYTHON, the repo's .venv is used, created first by
# ops/venv.sh when missing (a fresh clone) or older than pyproject.toml; it prints its progress on stderr.
py="$(service_python --create-venv)"
exec "$py" "$here/broker.py" start "$@"
