"""Helpers shared by the Python test suites (tests/run runs them with cwd
tests/, so `import ldtest` works): where the built programs are, running the
CLI with a bounded wait, a free 127.0.0.1 port, interrupting a command once
it has got going, reading and rewriting a model file's metadata, and a
client that fills a daemon's queue memory.
"""
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("LD_BUILD", os.path.join(os.path.dirname(HERE), "build"))
DAEMON = os.path.join(BUILD, "langdaugd")
CLI = os.environ.get("LD_CLI", os.path.join(BUILD, "langdaug"))


def run_cli(*args, timeout):
    """Runs `langdaug ARGS` (each argument str()'ed) and returns the
    CompletedProcess with text stdout and stderr."""
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def run_cli_ok(*args, timeout=120):
    """run_cli that raises AssertionError with the command's stderr unless it exits 0."""
    r = run_cli(*args, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError("langdaug %s failed: %s" % (" ".join(map(str, args)), r.stderr))
    return r


def safetensors_meta(path):
    """The __metadata__ of a safetensors file (model or checkpoint)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))["__metadata__"]


def write_with_meta(src, dst, **changes):
    """A copy of model file src with metadata keys changed (None = removed);
    keys with dots or dashes go through a dict: **{"train.pairs": "A:B"}."""
    with open(src, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    for k, v in changes.items():
        if v is None:
            header["__metadata__"].pop(k, None)
        else:
            header["__metadata__"][k] = v
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data[8 + n:])


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


class Hog:
    """A raw client of a daemon's data socket that asks for `credits` batches of `batch_size`
    samples of `target` (step 0) and never reads them, with tiny receive buffers: once the
    kernel's socket buffers are full, its batches wait in the daemon's ZeroMQ queue and hold
    max_queue_memory, so no other client gets a batch of that size until the hog closes. A
    thread owns the socket and sends heartbeats every 50 ms, so that even a short idle_timeout
    keeps its session. close() (idempotent) ends the thread and the socket."""

    def __init__(self, endpoint, target, batch_size, credits=1000):
        import zmq
        from langdaug import langdaug_pb2 as pb
        self._zmq, self._pb = zmq, pb
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        pull = pb.PullRequest(credits=credits, batch_size=batch_size, targets=[target], steps=[0])
        self._thread = threading.Thread(target=self._run, args=(endpoint, pull), daemon=True)
        self._thread.start()

    def _run(self, endpoint, pull):
        zmq, pb = self._zmq, self._pb
        sock = self._ctx.socket(zmq.DEALER)
        for opt, value in ((zmq.LINGER, 0), (zmq.RCVHWM, 1), (zmq.RCVBUF, 4096)):
            sock.setsockopt(opt, value)
        sock.connect(endpoint)
        sock.send(pb.ClientMessage(version=1, pull=pull).SerializeToString())
        beat = pb.ClientMessage(version=1, heartbeat=pb.Heartbeat()).SerializeToString()
        while not self._stop.wait(0.05):
            try:
                sock.send(beat, zmq.DONTWAIT)
            except zmq.Again:  # the daemon is not reading: its session ends, which the test sees
                pass
        sock.close()

    def close(self):
        self._stop.set()
        self._thread.join(10)
        self._ctx.destroy(linger=0)
