"""tests/_ports.py: a launch that lost its port to another process between the probe and its bind runs again on a
fresh port; any other failure is the answer."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys

import pytest

from _ports import failed_on_a_port_collision, retry_on_port_collision

BIND = "import socket, sys; socket.socket().bind(('127.0.0.1', int(sys.argv[1]))); print('bound')"


def test_a_launch_whose_port_was_taken_runs_again_on_a_fresh_port():
    ports = []

    def launch(port: int) -> subprocess.CompletedProcess:
        ports.append(port)
        return subprocess.run([sys.executable, "-c", BIND, str(port)], capture_output=True, text=True, timeout=60)

    with socket.socket() as taken:  # another process's listener on the port the launch was given first
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = retry_on_port_collision(launch, first_port=port)
    assert proc.returncode == 0 and proc.stdout.strip() == "bound"
    assert ports[0] == port and len(ports) == 2 and ports[1] != port


def test_an_exception_naming_the_port_is_retried_until_the_attempts_run_out():
    calls = []

    def run(port: int) -> int:
        calls.append(port)
        raise OSError(errno.EADDRINUSE, "Address already in use")

    with pytest.raises(OSError, match="Address already in use"):
        retry_on_port_collision(run, attempts=3)
    assert len(calls) == 3


def test_any_other_failure_is_the_answer_at_once():
    calls = []

    def launch(port: int) -> subprocess.CompletedProcess:
        calls.append(port)
        return subprocess.CompletedProcess([], 1, "", "ValueError: something else\n")

    assert retry_on_port_collision(launch).returncode == 1 and len(calls) == 1
    with pytest.raises(ValueError):
        retry_on_port_collision(lambda port: int("x"))


@pytest.mark.parametrize(
    "stderr",
    [
        # torch's TCPStore under torchrun --master_port / accelerate launch --main_process_port
        "torch.distributed.DistNetworkError: The server socket has failed to listen on any local network address. "
        "port: 29500, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use",
        "OSError: [Errno 98] Address already in use",  # a vLLM server's bind
        "ConnectionError: Tried to launch distributed communication on port `29500`, but another process is "
        "utilizing it.",
    ],
)
def test_the_launchers_collision_messages_are_recognised(stderr):
    assert failed_on_a_port_collision(subprocess.CompletedProcess([], 1, "", stderr))
    assert not failed_on_a_port_collision(subprocess.CompletedProcess([], 0, "", stderr))  # it ran: no retry
    assert failed_on_a_port_collision(RuntimeError(f"the server exited before answering /health:\n{stderr}"))
