"""The hostaudit command line: run, test config, test output, export config, export template, version; index and
test index-config (the indexer service, actors/indexer)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Sequence

from actors import __version__

if TYPE_CHECKING:
    from actors.config import Settings

log = logging.getLogger("hostaudit")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hostaudit", description="Host security auditing agent "
                                     "(the Auditbeat System module's datasets as ECS events).")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("-c", "--config", metavar="FILE", help="YAML configuration file (Auditbeat shape)")
        sub.add_argument("-E", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a setting, e.g. -E output.file.path=/tmp/out (repeatable)")
        return sub

    with_config(commands.add_parser("run", help="run the agent in the foreground"))
    test = commands.add_parser("test", help="check the configuration or the output")
    test_what = test.add_subparsers(dest="what", required=True)
    with_config(test_what.add_parser("config", help="validate the configuration"))
    with_config(test_what.add_parser("output", help="connect to the configured output and check it"))
    with_config(test_what.add_parser("index-config", help="validate the configuration of `hostaudit index`"))
    export = commands.add_parser("export", help="print the effective configuration or the index template")
    export_what = export.add_subparsers(dest="what", required=True)
    with_config(export_what.add_parser("config", help="print the effective configuration as YAML"))
    template = with_config(export_what.add_parser(
        "template", help="print the composable index template (JSON) for the events, from setup.template.*",
        description="Print the body of PUT _index_template/<name> for hostaudit's events: a data stream template "
                    "for setup.template.pattern (default hostaudit-*), mapped from the ECS field table and the "
                    "datasets' system.audit.* fields."))
    template.add_argument("--flavor", choices=("elasticsearch", "opensearch"), default="elasticsearch",
                          help="the engine: opensearch replaces the ECS types it lacks (flattened -> flat_object, "
                               "constant_keyword -> keyword, match_only_text -> text, wildcard -> keyword) and "
                               "leaves out ILM (default: elasticsearch)")
    template.add_argument("--fields", choices=("hostaudit", "ecs"), default="hostaudit",
                          help="map only the fields hostaudit's events can carry (default), or every field of the "
                               "ECS table")
    template.add_argument("--replicas", type=int, metavar="N",
                          help="index.number_of_replicas (e.g. 0 for a one-node test cluster); default: "
                               "setup.template.settings.index.number_of_replicas, else the engine's (1)")
    with_config(commands.add_parser("index", help="run the indexer service: Kafka -> Elasticsearch/OpenSearch"))
    commands.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    if arguments.command == "version":
        print(f"hostaudit version {__version__} (Python {sys.version.split()[0]})")
        return 0

    if arguments.command == "index" or arguments.command == "test" and arguments.what == "index-config":
        from actors.indexer import command
        run_indexer = command.index if arguments.command == "index" else command.check_config
        return run_indexer(arguments.config, arguments.overrides)

    from actors.config import ConfigError, export_yaml, load_settings
    from actors.datasets import CATALOG

    try:
        settings = load_settings(arguments.config, arguments.overrides, catalog=CATALOG)
    except ConfigError as error:
        print(f"hostaudit: configuration error: {error}", file=sys.stderr)
        return 1
    if arguments.command == "test" and arguments.what == "config":
        print("Config OK")
        return 0
    if arguments.command == "export" and arguments.what == "template":
        return _export_template(settings, arguments)
    if arguments.command == "export":
        sys.stdout.write(export_yaml(settings))
        return 0
    if arguments.command == "test" and arguments.what == "output":
        from actors.outputs.check import check_output
        return check_output(settings)
    return _run(settings)


def _export_template(settings: "Settings", arguments: argparse.Namespace) -> int:
    import json

    from actors.config import ConfigError
    from actors.config.secrets import plain
    from actors.template import TemplateOptions, index_template

    if arguments.replicas is not None and arguments.replicas < 0:
        print(f"hostaudit: --replicas: must be 0 or more, not {arguments.replicas}", file=sys.stderr)
        return 1
    try:
        options = TemplateOptions(plain(settings.tree.get("setup")))
    except ConfigError as error:
        print(f"hostaudit: configuration error: {error}", file=sys.stderr)
        return 1
    template, warnings = index_template(arguments.flavor, arguments.fields, options, arguments.replicas)
    for warning in warnings:
        print(f"hostaudit: warning: {warning}", file=sys.stderr)
    sys.stdout.write(json.dumps(template, indent=2) + "\n")
    return 0


def _run(settings: "Settings") -> int:
    import setproctitle

    from actors.runtime.agent import load_agent_identity, load_digest_key
    from actors.runtime.data_lock import DataDirectoryLocked, lock_data_directory
    from actors.runtime.logs import configure_logging
    from actors.runtime.state import StateStore
    from actors.runtime.supervisor import exec_supervisor, plan

    setproctitle.setproctitle("hostaudit: supervisor")
    configure_logging(settings.logging_level, "supervisor")
    try:
        lock_fd = lock_data_directory(settings.path_data)  # before anything else touches path.data; held until exit
    except DataDirectoryLocked as error:
        print(f"hostaudit: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"hostaudit: path.data: cannot use {settings.path_data}: {error.strerror}", file=sys.stderr)
        return 1
    try:
        agent = load_agent_identity(settings.path_data)
        load_digest_key(settings.path_data)  # created here, once, before the collectors read it
        # Checked once here, before the collectors open it concurrently: a corrupt store is moved aside once.
        StateStore(settings.path_data / "state.db").close()
    except OSError as error:
        print(f"hostaudit: path.data: cannot use {settings.path_data}: {error.strerror}", file=sys.stderr)
        return 1
    log.info("hostaudit %s starting: datasets %s, output %s, path.data %s", __version__,
             ", ".join(settings.datasets), settings.output.type, settings.path_data)
    exec_supervisor(plan(settings, agent, lock_fd))  # the configuration's modules stay behind, in this image


if __name__ == "__main__":
    sys.exit(main())
