"""Helpers shared by the Python test suites (tests/run runs them with cwd
tests/, so `import ldtest` works): where the built programs are, running the
CLI with a bounded wait, a free 127.0.0.1 port, and interrupting a command
once it has got going.
"""
import os
import signal
import socket
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("LD_BUILD", os.path.join(os.path.dirname(HERE), "build"))
DAEMON = os.path.join(BUILD, "langdaugd")
CLI = os.environ.get("LD_CLI", os.path.join(BUILD, "langdaug"))


def run_cli(*args, timeout):
    """Runs `langdaug ARGS` (each argument str()'ed) and returns the
    CompletedProcess with text stdout and stderr."""
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interrupt_when(proc, ready, timeout):
    """Waits (at most timeout seconds) until ready() is true or proc has
    ended, sends SIGINT, and waits (again at most timeout seconds) for proc
    to exit. Returns (whether ready() was true when SIGINT was sent, proc's
    stderr). proc must have been started with stderr=subprocess.PIPE; it is
    killed if anything goes wrong."""
    try:
        deadline = time.monotonic() + timeout
        while True:
            was_ready = ready()
            if was_ready or proc.poll() is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=timeout)
        return was_ready, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
