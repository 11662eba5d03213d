"""End-to-end check of ops/kafka/broker.py with kafka-python: produce, consume, restart on same data, TLS; prints figures."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from broker import KafkaBroker, fetch_jars, kafka_version, make_ssl_material  # noqa: E402

from kafka import KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.admin import KafkaAdminClient, NewTopic  # noqa: E402
from kafka.errors import KafkaError  # noqa: E402


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0, **ssl_kw: object) -> list[bytes]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=2000, **ssl_kw)
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < expected and time.monotonic() < deadline:
            for msg in consumer:
                values.append(msg.value)
                if len(values) >= expected:
                    break
    finally:
        consumer.close()
    return values


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=1024, help="bytes per message")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds the broker stays down before the restart")
    ap.add_argument("--workdir", default=None, help="default: a fresh temp dir, removed at the end")
    args = ap.parse_args()

    figures: dict[str, object] = {"kafka_version": kafka_version()}
    t0 = time.monotonic()
    fetch_jars()
    figures["fetch_seconds"] = round(time.monotonic() - t0, 3)

    tmp = tempfile.TemporaryDirectory(prefix="hostaudit-kafka-selftest-") if args.workdir is None else None
    workdir = Path(args.workdir or tmp.name)  # type: ignore[union-attr]
    ssl_mat = make_ssl_material(workdir / "ssl")
    broker = KafkaBroker(workdir, ssl=ssl_mat)
    ok = True
    try:
        broker.start()
        figures["cold_start_to_ready_seconds"] = round(broker.last_start_seconds or 0, 2)
        figures["rss_mib_idle"] = round((broker.rss_kib() or 0) / 1024, 1)

        topic = "selftest"
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        admin.close()

        payloads = [(f"{i:08d}:".encode() + os.urandom((args.size - 9) // 2).hex().encode()).ljust(args.size, b"x")
                    for i in range(args.messages)]
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=True,
                                 compression_type="lz4", linger_ms=5)
        t0 = time.monotonic()
        for p in payloads:
            producer.send(topic, p)
        producer.flush(timeout=120)
        dt = time.monotonic() - t0
        producer.close()
        figures["produce_msgs_per_s"] = round(args.messages / dt)

        t0 = time.monotonic()
        got = consume_all(broker.bootstrap, topic, args.messages)
        figures["consume_msgs_per_s"] = round(len(got) / (time.monotonic() - t0))
        figures["consumed_first"] = len(got)
        ok &= got == payloads
        figures["rss_mib_after_load"] = round((broker.rss_kib() or 0) / 1024, 1)

        t0 = time.monotonic()
        broker.stop()
        figures["stop_seconds"] = round(time.monotonic() - t0, 2)
        time.sleep(args.pause)
        broker.restart_same_data()
        figures["restart_to_ready_seconds"] = round(broker.last_start_seconds or 0, 2)
        got = consume_all(broker.bootstrap, topic, args.messages)
        figures["consumed_after_restart"] = len(got)
        ok &= got == payloads

        tls = dict(security_protocol="SSL", ssl_cafile=str(ssl_mat.ca_pem), ssl_check_hostname=True)
        producer = KafkaProducer(bootstrap_servers=broker.ssl_bootstrap, acks="all", **tls)
        producer.send("selftest-tls", b"over tls").get(timeout=30)
        producer.close()
        figures["tls_produce"] = consume_all(broker.ssl_bootstrap, "selftest-tls", 1, **tls) == [b"over tls"]
        ok &= bool(figures["tls_produce"])
        try:
            bad = KafkaProducer(bootstrap_servers=broker.ssl_bootstrap, max_block_ms=5000,
                                **{**tls, "ssl_cafile": str(ssl_mat.wrong_ca_pem)})
            bad.send("selftest-tls", b"must not arrive").get(timeout=10)
            bad.close()
            figures["tls_wrong_ca_rejected"] = False
        except KafkaError as exc:
            figures["tls_wrong_ca_rejected"] = type(exc).__name__
        ok &= figures["tls_wrong_ca_rejected"] is not False
    finally:
        broker.stop()
        if tmp is not None:
            tmp.cleanup()
    figures["ok"] = ok
    print(json.dumps(figures, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
