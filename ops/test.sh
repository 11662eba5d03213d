#!/usr/bin/env bash
# The whole test suite on a fresh machine: creates .venv, installs hostaudit with its test extras, starts a
# real Apache Kafka broker from Maven Central jars (unless KAFKA_BOOTSTRAP_SERVERS names one), runs pytest,
# stops the broker. Extra arguments go to pytest (e.g. `bash ops/test.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

source ops/venv.sh

broker_dir=""
stop_broker() {
  if [ -n "$broker_dir" ]; then
    .venv/bin/python ops/kafka/broker.py stop --workdir "$broker_dir" || true
    rm -rf "$broker_dir"
  fi
}
trap stop_broker EXIT

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && [ -f ops/kafka/broker.py ]; then
  echo "--- starting a Kafka broker (KRaft) from Maven Central jars"
  broker_dir=$(mktemp -d /tmp/hostaudit-kafka.XXXXXX)
  KAFKA_BOOTSTRAP_SERVERS=$(.venv/bin/python ops/kafka/broker.py start --workdir "$broker_dir")
  export KAFKA_BOOTSTRAP_SERVERS
  echo "--- broker ready at $KAFKA_BOOTSTRAP_SERVERS"
fi

echo "--- pytest"
.venv/bin/python -m pytest "$@"
