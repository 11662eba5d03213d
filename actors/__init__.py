"""hostaudit: a host security-auditing agent (the Auditbeat System module's datasets, as ECS events)."""

__version__ = "0.1.0"
