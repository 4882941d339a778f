"""A free local TCP port for a test's launcher or server, and a retry when another process took it first.

:func:`free_port` asks the kernel for an unused port and releases it: between that probe and the launch's own bind
another process can take it. :func:`retry_on_port_collision` runs the launch again on a fresh port when its failure
names an address in use: torch's TCPStore (``torch.distributed.run --master_port``, ``accelerate launch
--main_process_port``: "The server socket has failed to listen ... EADDRINUSE"), a vLLM server's
``OSError: [Errno 98] Address already in use``, an in-process ``bind`` (``OSError`` with ``errno.EADDRINUSE``).
"""

from __future__ import annotations

import errno
import socket
import subprocess
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: What a launch prints or raises when its port was taken (compared in lower case).
COLLISION_MESSAGES = (
    "address already in use",
    "eaddrinuse",
    "the server socket has failed to listen",
    "another process is utilizing it",  # accelerate's refusal of a port in use
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def names_a_port_collision(text: str | None) -> bool:
    text = (text or "").lower()
    return any(message in text for message in COLLISION_MESSAGES)


def _text(out: str | bytes | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else out or ""


def failed_on_a_port_collision(result: object) -> bool:
    """A finished process (``returncode != 0``) or an exception that names an address in use."""
    if isinstance(result, subprocess.CompletedProcess):
        return result.returncode != 0 and names_a_port_collision(_text(result.stdout) + _text(result.stderr))
    if isinstance(result, BaseException):
        if isinstance(result, OSError) and result.errno == errno.EADDRINUSE:
            return True
        outputs = (_text(getattr(result, name, None)) for name in ("stdout", "stderr", "output"))
        return names_a_port_collision(str(result) + "".join(outputs))
    return False


def retry_on_port_collision(run: Callable[[int], T], attempts: int = 3, first_port: int | None = None) -> T:
    """``run(port)`` on a free port; run again on a fresh port, ``attempts`` times in all, while it fails on a port
    collision: it returns a finished process (``subprocess.CompletedProcess``) with ``returncode != 0`` whose output
    names an address in use, or raises such an exception. Any other result or exception is the answer (the last
    attempt's, whatever it is). ``first_port``: the first attempt's port, when the caller already chose one."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1; got {attempts}")
    for attempt in range(1, attempts + 1):
        port = first_port if attempt == 1 and first_port is not None else free_port()
        try:
            result = run(port)
        except Exception as err:
            if attempt < attempts and failed_on_a_port_collision(err):
                continue
            raise
        if attempt < attempts and failed_on_a_port_collision(result):
            continue
        return result
    raise AssertionError("unreachable: the last attempt returns or raises")
