"""The configuration: Beats-style layers merged by dynaconf, checked against one declared schema.

- `layers.py`  reads settings.yaml, `-c`, the secrets file, HOSTAUDIT_* and -E, and merges them (dynaconf)
- `schema.py`  the pydantic models of every framework key (each dataset's own are in its options.py)
- `load.py`    checks the merged tree against the schema and the cross-section rules -> `Settings`
- `secrets.py` `Secret` and the read-only containers

It never imports a dataset: the caller hands `load_settings` the dataset catalog (`actors.datasets.CATALOG`).
"""

from actors.config.load import (DEFAULTS_FILE, DatasetSettings, OutputSettings, Settings, SupervisorSettings,
                                export_yaml, format_string_fields, kafka_routing_warnings, load_settings)
from actors.config.secrets import FrozenDict, Secret
from actors.options import ConfigError, is_secret_key

__all__ = ["DEFAULTS_FILE", "ConfigError", "DatasetSettings", "FrozenDict", "OutputSettings", "Secret", "Settings",
           "SupervisorSettings", "export_yaml", "format_string_fields", "is_secret_key", "kafka_routing_warnings",
           "load_settings"]
