#!/usr/bin/env bash
# The whole test suite on a fresh machine: creates .venv, installs hostaudit with its test extras, starts a
# real Apache Kafka broker (unless KAFKA_BOOTSTRAP_SERVERS names one) and a real one-node OpenSearch (unless
# HOSTAUDIT_TEST_SEARCH_URL names one) from Maven Central jars, in parallel, runs pytest, stops them.
# Extra arguments go to pytest (e.g. `bash ops/test.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

source ops/venv.sh

broker_dir=""
search_dir=""
search_starter=""
stop_services() {
  if [ -n "$search_starter" ]; then kill "$search_starter" 2>/dev/null || true; fi
  if [ -n "$search_dir" ]; then
    .venv/bin/python ops/opensearch/node.py stop --workdir "$search_dir" || true
    rm -rf "$search_dir"
  fi
  if [ -n "$broker_dir" ]; then
    .venv/bin/python ops/kafka/broker.py stop --workdir "$broker_dir" || true
    rm -rf "$broker_dir"
  fi
}
trap stop_services EXIT

if [ -z "${HOSTAUDIT_TEST_SEARCH_URL:-}" ] && [ -f ops/opensearch/node.py ]; then
  echo "--- starting a one-node OpenSearch from Maven Central jars (in the background)"
  search_dir=$(mktemp -d /tmp/hostaudit-opensearch.XXXXXX)
  .venv/bin/python ops/opensearch/node.py start --workdir "$search_dir" \
    >"$search_dir/url" 2>"$search_dir/start.err" &
  search_starter=$!
fi

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && [ -f ops/kafka/broker.py ]; then
  echo "--- starting a Kafka broker (KRaft) from Maven Central jars"
  broker_dir=$(mktemp -d /tmp/hostaudit-kafka.XXXXXX)
  KAFKA_BOOTSTRAP_SERVERS=$(.venv/bin/python ops/kafka/broker.py start --workdir "$broker_dir")
  export KAFKA_BOOTSTRAP_SERVERS
  echo "--- broker ready at $KAFKA_BOOTSTRAP_SERVERS"
fi

if [ -n "$search_starter" ]; then
  if ! wait "$search_starter"; then
    search_starter=""
    cat "$search_dir/start.err" >&2
    exit 1
  fi
  search_starter=""
  HOSTAUDIT_TEST_SEARCH_URL=$(cat "$search_dir/url")
  export HOSTAUDIT_TEST_SEARCH_URL
  echo "--- OpenSearch ready at $HOSTAUDIT_TEST_SEARCH_URL"
fi

echo "--- pytest"
.venv/bin/python -m pytest "$@"
