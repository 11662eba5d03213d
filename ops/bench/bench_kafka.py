"""Benchmark of the spool -> Kafka path against bare kafka-python and kcat (librdkafka) on a real local broker."""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import logging
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from types import ModuleType
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ops" / "kafka"))

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

from actors.event import encode_document  # noqa: E402
from actors.config import load_settings  # noqa: E402
from actors.datasets import CATALOG  # noqa: E402
from actors.ecs import assert_ecs  # noqa: E402
from actors.outputs.kafka import KafkaOutput  # noqa: E402
from actors.outputs.routing import routing_fields, routing_values  # noqa: E402
from actors.runtime.producer import Delivery, ProducerActor, Stats  # noqa: E402
from actors.runtime.spool import SpoolWriter  # noqa: E402
from broker import BrokerError, KafkaBroker  # noqa: E402
from cpu import cpu_children, cpu_self  # noqa: E402  (ops/bench/cpu.py)

HOST_ID = "4d8e7f5b0a2c4e1f9b3a6c5d7e8f9a0b"
AGENT_ID = "0b0d5b5e-7a1c-4f6e-9d8a-3f2e1c0b9a87"
DATASET = "process"
SPOOL_APPEND_EVENTS = 256  # events per SpoolWriter.append (one collector cycle's worth), each fsync'ed
KAFKA_PYTHON_LINGER_MS = 5
KAFKA_PYTHON_BATCH_BYTES = 256 * 1024  # the same batch_size as actors.outputs.kafka.producer_config
DEADLINE_SECONDS = 300.0  # per measured run: a stuck run fails instead of hanging the benchmark


# ---------------------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------------------

PROGRAMS = [
    ("sshd", "/usr/sbin/sshd", ["sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"], "0", "root"),
    ("bash", "/usr/bin/bash", ["-bash"], "1000", "alice"),
    ("python3", "/usr/bin/python3.11", ["/usr/bin/python3", "/opt/app/worker.py", "--queue", "default"],
     "998", "app"),
    ("curl", "/usr/bin/curl", ["curl", "-fsSL", "https://example.org/api/v1/health?probe=liveness"],
     "1000", "alice"),
    ("cron", "/usr/sbin/cron", ["/usr/sbin/cron", "-f", "-P"], "0", "root"),
    ("nginx", "/usr/sbin/nginx", ["nginx: worker process"], "33", "www-data"),
    ("git", "/usr/bin/git", ["git", "fetch", "--prune", "--tags", "origin"], "1000", "alice"),
]
CAPABILITIES = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT"]


def make_events(count: int, seed: int = 3) -> list[tuple[bytes, dict[str, str | None]]]:
    """`count` process events (started/stopped), ECS-valid, about 1 KB each, encoded by the collector's encoder,
    each with the routing values the collector records for the benchmark's output settings (the key's host.id)."""
    fields = routing_fields("kafka", {"topic": "bench", "key": "%{[host.id]}"})
    rng = random.Random(seed)
    base = datetime(2026, 11, 26, 9, 0, 0, tzinfo=timezone.utc)
    events: list[tuple[bytes, dict[str, str | None]]] = []
    for sequence in range(1, count + 1):
        name, executable, args, uid, user = PROGRAMS[rng.randrange(len(PROGRAMS))]
        pid = rng.randrange(300, 4_000_000)
        started = base + timedelta(milliseconds=sequence * 7)
        stopped = rng.random() < 0.45
        capabilities = CAPABILITIES if uid == "0" else []
        document: dict[str, Any] = {
            "@timestamp": (started + timedelta(seconds=3 if stopped else 0)).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "agent": {"type": "hostaudit", "name": "bench-host", "version": "0.1.0", "id": AGENT_ID,
                      "ephemeral_id": "5f3c2a1b-8d7e-4c6b-a9f0-1e2d3c4b5a69"},
            "ecs": {"version": "9.4.0"},
            "service": {"type": "system"},
            "host": {"id": HOST_ID, "name": "bench-host", "hostname": "bench-host"},
            "process": {
                "pid": pid, "name": name, "working_directory": "/home/" + user if uid != "0" else "/",
                "executable": executable,
                "start": started.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "entity_id": uuid.UUID(int=rng.getrandbits(128)).hex[:16],
                "args": args + [f"--run={rng.getrandbits(32):08x}"],
                "parent": {"pid": rng.randrange(1, 40_000)},
                "hash": {"sha1": f"{rng.getrandbits(160):040x}"},
                "thread": {"capabilities": {"effective": capabilities, "permitted": capabilities}},
            },
            "user": {"id": uid, "name": user, "group": {"id": uid, "name": user}},
            "event": {
                "kind": "event", "category": ["process"], "type": ["end" if stopped else "start"],
                "action": "process_stopped" if stopped else "process_started", "module": "system",
                "dataset": DATASET, "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "sequence": sequence,
            },
            "message": f"Process {name} (PID: {pid}) by user {user} {'STOPPED' if stopped else 'STARTED'}",
        }
        if sequence == 1:
            assert_ecs(document)
        events.append((encode_document(document), routing_values(document, fields)))
    return events


# ---------------------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    cpu: float  # CPU seconds of the producing process (all its threads; kcat: the child's)
    events: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
    try:
        admin.create_topics([NewTopic(name, 1, 1) for name in names])
    finally:
        admin.close()


def topic_size(bootstrap: str, topic: str) -> int:
    """Messages in `topic` (end offset of its single partition)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        return int(consumer.end_offsets([partition])[partition])
    finally:
        consumer.close()


def first_message(bootstrap: str, topic: str) -> tuple[bytes | None, bytes]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=10_000)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        for record in consumer:
            return record.key, record.value
        raise AssertionError(f"no message in {topic}")
    finally:
        consumer.close()


def check_delivered(bootstrap: str, topic: str, expected: int, what: str) -> None:
    found = topic_size(bootstrap, topic)
    if found < expected:
        raise SystemExit(f"{what}: only {found} of {expected} events reached {topic}")
    key, _ = first_message(bootstrap, topic)
    if key != HOST_ID.encode():
        raise SystemExit(f"{what}: messages in {topic} are keyed {key!r}, expected the host id")


def ensure_kcat() -> str:
    found = shutil.which("kcat")
    if found:
        print(f"kcat: {found} (already installed)")
        return found
    print("kcat is missing: installing it with `apt-get install -y kcat` ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "kcat"], check=True, stdout=subprocess.DEVNULL)
    found = shutil.which("kcat")
    if not found:
        raise SystemExit("apt-get install -y kcat did not provide a kcat binary")
    print(f"kcat: installed {found}")
    return found


def kcat_version(kcat: str) -> str:
    text = subprocess.run([kcat, "-V"], capture_output=True, text=True).stdout
    for line in text.splitlines():
        if line.startswith("Version"):
            return line.split(" builtin.features")[0]
    return "version unknown"


def start_broker(workdir: Path) -> KafkaBroker:
    """A started broker (use it as a context manager to stop it); retried with a fresh directory if the start fails (once seen: a random cluster id that
    begins with '-' is taken for an option by kafka-storage format)."""
    for attempt in range(1, 4):
        broker = KafkaBroker(workdir / f"broker-{attempt}")
        try:
            broker.start()
            return broker
        except BrokerError as error:
            if attempt == 3:
                raise
            print(f"broker start failed ({str(error).splitlines()[0][:120]}); retrying", flush=True)
    raise AssertionError("unreachable")


def load_revision(revision: str, directory: Path) -> tuple[ModuleType, ModuleType]:
    """actors/outputs/kafka.py and actors/runtime/producer.py as they were at git `revision`, imported under other names."""
    modules = []
    for name, path in (("before_kafka", "actors/outputs/kafka.py"), ("before_producer", "actors/runtime/producer.py")):
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{path}"], capture_output=True,
                                text=True, check=True).stdout
        file = directory / f"{name}.py"
        file.write_text(source)
        spec = importlib.util.spec_from_file_location(name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        modules.append(module)
    return modules[0], modules[1]


# ---------------------------------------------------------------------------------------------------------
# (a) bare kafka-python, (b) kcat, (c) hostaudit spool -> ProducerActor -> KafkaOutput
# ---------------------------------------------------------------------------------------------------------

def run_kafka_python(bootstrap: str, topic: str, events: list[bytes]) -> Run:
    key = HOST_ID.encode()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                             compression_type="lz4", batch_size=KAFKA_PYTHON_BATCH_BYTES,
                             linger_ms=KAFKA_PYTHON_LINGER_MS, client_id="bench-kafka-python")
    try:
        producer.partitions_for(topic)  # metadata and the producer id before the clock starts
        cpu, started = cpu_self(), time.perf_counter()
        send = producer.send
        for value in events:
            send(topic, value=value, key=key)
        producer.flush(timeout=DEADLINE_SECONDS)
        return Run(time.perf_counter() - started, cpu_self() - cpu, len(events))
    finally:
        producer.close(timeout=10)


def write_kcat_input(path: Path, events: list[bytes]) -> None:
    """One `host.id<TAB>event` line per event (compact JSON never holds a raw tab or newline)."""
    key = HOST_ID.encode()
    with path.open("wb") as handle:
        for value in events:
            if b"\t" in value or b"\n" in value:
                raise AssertionError("an encoded event contains a raw tab or newline")
            handle.write(key + b"\t" + value + b"\n")


def run_kcat(kcat: str, bootstrap: str, topic: str, lines: Path, count: int) -> Run:
    command = [kcat, "-P", "-b", bootstrap, "-t", topic, "-K", "\\t", "-z", "lz4", "-X", "enable.idempotence=true",
               "-X", "acks=all", "-X", "client.id=bench-kcat", "-l", str(lines)]
    cpu, started = cpu_children(), time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_SECONDS)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"kcat failed (exit {result.returncode}): {result.stderr.strip()}")
    return Run(seconds, cpu_children() - cpu, count)


def write_spool(spool_root: Path, events: list[tuple[bytes, dict[str, str | None]]]) -> float:
    """Spool the events (with their routing values) as a collector would: appends of SPOOL_APPEND_EVENTS, each
    fsync'ed. Returns seconds."""
    started = time.perf_counter()
    with SpoolWriter(spool_root / DATASET, fsync=True) as writer:
        for first in range(0, len(events), SPOOL_APPEND_EVENTS):
            chunk = events[first:first + SPOOL_APPEND_EVENTS]
            writer.append([(first + index + 1, payload, routing) for index, (payload, routing) in enumerate(chunk)])
    return time.perf_counter() - started


def output_options(bootstrap: str, topic: str) -> dict[str, Any]:
    """The agent's effective `output.kafka` options (settings.yaml defaults) for this broker and topic."""
    settings = load_settings(overrides=["output.file.enabled=false", "output.kafka.enabled=true",
                                        f"output.kafka.hosts=[{bootstrap}]", f"output.kafka.topic={topic}",
                                        "path.data=/nonexistent-bench"], environ={}, catalog=CATALOG)
    assert settings.output.type == "kafka"
    return dict(settings.output.options)


def deliver_all(pump: Callable[[], Any], acknowledged: Callable[[], int], count: int) -> None:
    """Pump until `count` events are acknowledged (what the actor does, without its waits)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while acknowledged() < count:
        result = pump()
        if result.retry_after:
            raise SystemExit("hostaudit path: the output failed during the benchmark")
        if time.monotonic() > deadline:
            raise SystemExit(f"hostaudit path: {acknowledged()} of {count} acknowledged after {DEADLINE_SECONDS} s")


def run_hostaudit(bootstrap: str, topic: str, spool_root: Path, count: int,
                  kafka_module: Any = None, producer_module: Any = None) -> Run:
    """ProducerActor (its own thread, pumping on its own, as in the agent) + KafkaOutput from the spooled events
    to the last ack. `kafka_module`/`producer_module` replace actors.outputs.kafka/actors.runtime.producer (an
    older revision)."""
    if producer_module is not None and not hasattr(producer_module, "Delivery"):
        return run_hostaudit_pumped(bootstrap, topic, spool_root, count, kafka_module, producer_module)
    output_class = kafka_module.KafkaOutput if kafka_module else KafkaOutput
    actor_class, delivery_class, stats_message = ((producer_module.ProducerActor, producer_module.Delivery,
                                                   producer_module.Stats) if producer_module
                                                  else (ProducerActor, Delivery, Stats))
    options = output_options(bootstrap, topic)
    output = output_class(options)
    cpu, started = cpu_self(), time.perf_counter()
    actor = actor_class.start(delivery_class(spool_root.parent, output, bulk_max_size=int(options["bulk_max_size"])))
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:  # the heartbeat's way in: ask for the figures (a few µs every 2 ms)
            figures = actor.ask(stats_message(), timeout=DEADLINE_SECONDS)
            if figures["acknowledged"].get(DATASET, 0) >= count:
                break
            if figures["failed_batches"]:
                raise SystemExit("hostaudit path: the output failed during the benchmark")
            if time.monotonic() > deadline:
                raise SystemExit(f"hostaudit path: not all {count} acknowledged after {DEADLINE_SECONDS} s")
            time.sleep(0.002)
        seconds, cpu_used = time.perf_counter() - started, cpu_self() - cpu
    finally:
        actor.stop(timeout=30)
    return Run(seconds, cpu_used, count)


def run_hostaudit_pumped(bootstrap: str, topic: str, spool_root: Path, count: int, kafka_module: Any,
                         producer_module: Any) -> Run:
    """An older revision's producer: an actor pumped by asking it to (`Pump`), stats in a shared object."""
    options = output_options(bootstrap, topic)
    output = kafka_module.KafkaOutput(options)
    stats = producer_module.DeliveryStats()
    cpu, started = cpu_self(), time.perf_counter()
    actor = producer_module.ProducerActor.start(spool_root.parent, output, bulk_max_size=int(options["bulk_max_size"]),
                                                stats=stats)
    try:
        deliver_all(lambda: actor.ask(producer_module.Pump()), lambda: stats.acknowledged.get(DATASET, 0), count)
        seconds, cpu_used = time.perf_counter() - started, cpu_self() - cpu
    finally:
        actor.stop(timeout=30)
    return Run(seconds, cpu_used, count)


def own_time_by_group(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Profiled own time summed per owner: hostaudit's modules, kafka-python, C built-ins, the rest."""
    groups: dict[str, float] = {}
    for (filename, _line, _function), (_calls, _primitive, own, _cumulative, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if filename.startswith(str(REPO / "actors")):
            group = filename[len(str(REPO)) + 1:]
        elif "/site-packages/kafka/" in filename:
            group = "kafka-python"
        elif filename == "~":
            group = "C built-ins (socket, locks, json, crc32c, lz4)"
        else:
            group = "other Python (stdlib, pykka)"
        groups[group] = groups.get(group, 0.0) + own
    return sorted(groups.items(), key=lambda item: -item[1])


def profile_hostaudit(bootstrap: str, topic: str, spool_root: Path, count: int, top: int) -> str:
    """cProfile of the hostaudit path: the pumping thread, and kafka-python's sender thread separately."""
    from kafka.producer.sender import Sender

    sender_profile = cProfile.Profile()
    original_run = Sender.run

    def profiled_run(self: Any) -> None:
        sender_profile.enable()
        try:
            original_run(self)
        finally:
            sender_profile.disable()

    Sender.run = profiled_run  # type: ignore[method-assign]
    options = output_options(bootstrap, topic)
    output = KafkaOutput(options)
    producer = Delivery(spool_root.parent, output, bulk_max_size=int(options["bulk_max_size"]))  # pumped here
    pump_profile = cProfile.Profile()
    started = time.perf_counter()
    try:
        pump_profile.enable()
        deliver_all(producer.pump, lambda: producer.stats.acknowledged.get(DATASET, 0), count)
        pump_profile.disable()
        seconds = time.perf_counter() - started
    finally:
        output.close()
        Sender.run = original_run  # type: ignore[method-assign]
    report = io.StringIO()
    report.write(f"profiled run: {count} events in {seconds:.2f} s ({count / seconds:,.0f} events/s under cProfile). "
                 "Own time of a C call that releases the GIL (socket send/recv, epoll, lock acquire) includes "
                 "waiting for the GIL back: the two threads and the broker share 2 cores.\n")
    for title, profile in (("pumping thread (Delivery.pump)", pump_profile),
                           ("kafka-python sender thread", sender_profile)):
        stream = io.StringIO()
        stats = pstats.Stats(profile, stream=stream)
        report.write(f"\n### {title}: {stats.total_tt:.2f} s inside profiled functions\n")
        report.write("own time by where the code lives: " + ", ".join(
            f"{group} {seconds_in:.2f} s ({seconds_in / stats.total_tt:.0%})"
            for group, seconds_in in own_time_by_group(stats)) + f"\ntop {top} functions by own time:\n")
        stats.sort_stats("tottime").print_stats(top)
        report.write("\n".join(line for line in stream.getvalue().splitlines()
                               if line.strip() and "List reduced" not in line
                               and not line.startswith(("   Ordered", "         "))))
        report.write("\n")
    return report.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------

def median_run(runs: list[Run]) -> tuple[float, float]:
    """Median events/s and median CPU µs per event."""
    return (statistics.median(run.rate for run in runs),
            statistics.median(run.cpu / run.events * 1e6 for run in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="events per measured run")
    parser.add_argument("--runs", type=int, default=3, help="measured runs of each path")
    parser.add_argument("--before", metavar="GIT_REV", default=None,
                        help="also run (c) with actors/outputs/kafka.py and actors/runtime/producer.py from this revision")
    parser.add_argument("--profile-events", type=int, default=60_000, help="events in the cProfile run (0 = none)")
    parser.add_argument("--top", type=int, default=15, help="functions listed per profiled thread")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temp dir (broker, spools)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)

    total_started = time.monotonic()
    kcat = ensure_kcat()
    print(f"generating {args.events:,} events ...", flush=True)
    spooled = make_events(args.events)
    events = [payload for payload, _ in spooled]
    average = sum(map(len, events)) / len(events)
    print(f"  {average:.0f} bytes on average ({min(map(len, events))}-{max(map(len, events))}), keyed by host.id")

    workdir = Path(tempfile.mkdtemp(prefix="bench-kafka-", dir=args.workdir))
    kinds = ["a", "b", "c"] + (["before"] if args.before else [])
    try:
        before = load_revision(args.before, workdir) if args.before else None
        lines, warm_lines = workdir / "events.tsv", workdir / "warmup.tsv"
        warm = events[:20_000]
        write_kcat_input(lines, events)
        write_kcat_input(warm_lines, warm)
        with start_broker(workdir) as broker:  # the context manager stops it (SIGTERM, then SIGKILL)
            bootstrap = broker.bootstrap
            print(f"broker {bootstrap} ready in {broker.last_start_seconds:.1f} s; kcat {kcat_version(kcat)}")
            rounds = ["warmup"] + [str(n) for n in range(1, args.runs + 1)]
            create_topics(bootstrap, [f"bench-{kind}-{tag}" for tag in rounds + ["profile"] for kind in kinds])
            # Warm-up: JIT the broker, create __transaction_state (the first producer id), fill the page cache.
            run_kafka_python(bootstrap, "bench-a-warmup", warm)
            run_kcat(kcat, bootstrap, "bench-b-warmup", warm_lines, len(warm))
            spool_root = workdir / "warmup" / "spool"
            write_spool(spool_root, spooled[:len(warm)])
            run_hostaudit(bootstrap, "bench-c-warmup", spool_root, len(warm))
            shutil.rmtree(spool_root.parent)

            results: dict[str, list[Run]] = {kind: [] for kind in kinds}
            spool_seconds: list[float] = []
            for number, tag in enumerate(rounds[1:]):
                # Interleaved, in a rotated order each round, so that the machine's noise (and any drift of the
                # broker as its log grows) falls on every path alike.
                for kind in kinds[number % len(kinds):] + kinds[:number % len(kinds)]:
                    topic = f"bench-{kind}-{tag}"
                    if kind == "a":
                        results[kind].append(run_kafka_python(bootstrap, topic, events))
                    elif kind == "b":
                        results[kind].append(run_kcat(kcat, bootstrap, topic, lines, args.events))
                    else:
                        spool_root = workdir / f"{kind}-{tag}" / "spool"
                        spool_seconds.append(write_spool(spool_root, spooled))
                        modules = before if kind == "before" and before else (None, None)
                        results[kind].append(run_hostaudit(bootstrap, topic, spool_root, args.events, *modules))
                        shutil.rmtree(spool_root.parent)
                print(f"  round {tag}: " + ", ".join(f"({k}) {v[-1].rate:,.0f}/s" for k, v in results.items()),
                      flush=True)
                for kind in kinds:
                    check_delivered(bootstrap, f"bench-{kind}-{tag}", args.events, f"({kind}) round {tag}")

            profile = ""
            if args.profile_events:
                spool_root = workdir / "profile" / "spool"
                write_spool(spool_root, spooled[:args.profile_events])
                profile = profile_hostaudit(bootstrap, "bench-c-profile", spool_root, args.profile_events, args.top)
            broker_rss = broker.rss_kib() or 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    medians = {kind: median_run(runs) for kind, runs in results.items()}
    a, b, c = medians["a"][0], medians["b"][0], medians["c"][0]
    print()
    print(f"## Kafka: {args.events:,} events of {average:.0f} bytes, acks=all, idempotent, lz4, keyed by host.id; "
          f"medians of {args.runs} interleaved runs")
    print()
    print("| path | events/s (median) | runs | CPU µs/event | vs (a) |")
    print("|---|---|---|---|---|")
    labels = {"a": "(a) kafka-python send loop + flush", "b": "(b) kcat (librdkafka)",
              "c": "(c) hostaudit: spool -> ProducerActor -> KafkaOutput",
              "before": f"(c) at {args.before} (before)"}
    for kind in kinds:
        rate, cpu = medians[kind]
        runs = ", ".join(f"{run.rate / 1000:.1f}k" for run in results[kind])
        print(f"| {labels[kind]} | {rate:,.0f} | {runs} | {cpu:.0f} | {rate / a:.0%} |")
    print()
    print(f"(c)/(a) = {c / a:.0%} (goal >= 85%: {'met' if c >= 0.85 * a else 'NOT met'}), (c)/(b) = {c / b:.0%}"
          + (f", (c)/(c before) = {c / medians['before'][0]:.2f}x" if args.before else "") + ".")
    print(f"Spool writing (appends of {SPOOL_APPEND_EVENTS}, fsync each; not part of (c)): "
          f"{args.events / statistics.median(spool_seconds):,.0f} events/s. Broker RSS {broker_rss / 1024:.0f} MiB. "
          f"Whole benchmark {time.monotonic() - total_started:.0f} s.")
    if profile:
        print()
        print("## Profile of (c)")
        print(profile)


if __name__ == "__main__":
    main()
