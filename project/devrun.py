"""``make run``'s process runner: honcho, where Ctrl-C gives the worker its warm shutdown.

honcho on its own stops the Procfile's processes with SIGTERM to each one's whole process group and
SIGKILLs what is left 5 s later (``honcho.manager.KILL_WAIT``). The group of the worker holds its
prefork pool children, which die at once on SIGTERM, so the jobs they were running were lost. Here
SIGTERM goes to each process itself: the worker takes no new message, lets its pool finish the running
jobs, records them and exits (a warm shutdown, as a deployment's SIGTERM). Whatever still runs
TERMINUS_RUN_STOP_WAIT seconds (30) after Ctrl-C is killed, with its group. Development only: honcho
comes with the ``run`` extra, not with the runtime dependencies.
"""

from __future__ import annotations

import contextlib
import os
import signal

import honcho.command
import honcho.manager
from django.conf import settings
from honcho.compat import ProcessManager


class ProcessLeaders(ProcessManager):
    """SIGTERM to the process honcho started, not its group: each Procfile line ``exec``s its command,
    so that process is the command itself. The SIGKILL after the wait still takes the whole group."""

    def terminate(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            os.kill(pid, signal.SIGTERM)


def main() -> None:
    """``honcho`` with the arguments given, stopping as the module docstring says."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    honcho.manager.KILL_WAIT = settings.TERMINUS_RUN_STOP_WAIT
    honcho.manager.ProcessManager = ProcessLeaders
    honcho.command.main()


if __name__ == "__main__":
    main()
