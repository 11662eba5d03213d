"""Reading the host under `hostfs`: /proc, the /etc account files, host facts, entity ids."""
