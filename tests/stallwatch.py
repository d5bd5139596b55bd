"""A witness of scheduling stalls, for tests whose outcome a loaded machine can
change without any bug (a sub-second idle timeout: a client process or a daemon
loop that does not run for a few hundred milliseconds misses a heartbeat).

Such a test runs its scenario inside `with StallWatch(pids) as w:` and, when the
scenario fails in the way a stall could explain, asks `w.stalled(seconds)`:
- the run-queue delay (/proc/PID/task/TID/schedstat, second field: nanoseconds a
  thread was runnable but not running) accumulated by this process's main thread
  and by each watched process's main thread (a daemon's event loop) during the
  block, and
- the largest lateness of a thread of this process that wakes every 10 ms
  (which also sees GIL hand-over and whole-process stops).
The run-queue delay is a sum, so a total below the threshold proves that no
single stall reached it; a total above it does not prove one (the witness errs
toward "stalled", so a test retries a little more often than strictly needed,
never less). A test retries only a scenario that failed while a stall was
witnessed, a bounded number of times, and fails outright on a failure without
one: what it checks is not weakened, only its exposure to the machine's load.
"""
import os
import threading
import time


def run_delay(pid, tid=None):
    """Seconds thread tid (default: the main thread) of pid has waited runnable, or None."""
    try:
        with open("/proc/%d/task/%d/schedstat" % (pid, tid or pid)) as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class StallWatch:
    TICK = 0.01

    def __init__(self, pids=()):
        self.pids = [os.getpid()] + list(pids)
        self.lateness = 0.0
        self.delays = {}
        self._stop = threading.Event()

    def _watch(self):
        due = time.monotonic() + self.TICK
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            self.lateness = max(self.lateness, time.monotonic() - due)
            due = max(due + self.TICK, time.monotonic())

    def __enter__(self):
        self._start = {p: run_delay(p) for p in self.pids}
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        for p, start in self._start.items():
            end = run_delay(p)
            if start is not None and end is not None:
                self.delays[p] = end - start
        return False

    def stalled(self, seconds):
        """Whether a stall of `seconds` or more may have happened during the block."""
        unknown = len(self.delays) < len(self.pids)  # no proof of calm: count it as a stall
        return unknown or self.lateness >= seconds or any(d >= seconds for d in self.delays.values())

    def __str__(self):
        return "largest lateness %.3f s; run-queue delay %s" % (
            self.lateness, ", ".join("pid %d %.3f s" % kv for kv in self.delays.items()) or "unknown")
