"""Loading kernel modules with modprobe: the binder's one subprocess edge, injected into VfioBinder."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class Modprobe:
    """Runs `modprobe -a NAME...`; the binder calls it only when a module is not loaded yet."""

    def __init__(self, command: Sequence[str] = ("modprobe",), timeout: float = 60.0) -> None:
        self._command = tuple(command)
        self._timeout = timeout

    def __call__(self, names: Sequence[str]) -> None:
        """Load the modules; raise OSError with modprobe's message when it fails."""
        try:
            done = subprocess.run(
                [*self._command, "-a", *names],
                capture_output=True,
                text=True,
                timeout=self._timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise OSError(f"modprobe {' '.join(names)}: {e}") from e
        if done.returncode != 0:
            raise OSError(f"modprobe {' '.join(names)}: {done.stderr.strip() or f'exit {done.returncode}'}")
