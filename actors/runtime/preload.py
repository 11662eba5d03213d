"""The forkserver's preload: the shared modules (normally imported already by the supervisor it was forked from),
its title, and its objects frozen, so every child process shares their pages instead of loading its own."""

import signal

import setproctitle

from actors.runtime.sharing import freeze_for_fork, import_shared_modules

import_shared_modules()

setproctitle.setproctitle("hostaudit: forkserver")
# A service manager stops the whole process group at once (systemd's default KillMode). The forkserver must
# outlive that signal: the supervisor learns of each child's exit through it. It exits by itself when the
# supervisor is gone. Children set their own SIGTERM handler.
signal.signal(signal.SIGTERM, signal.SIG_IGN)

# What is imported so far lives as long as the forkserver: out of the collector's reach (`freeze_for_fork`).
freeze_for_fork()
