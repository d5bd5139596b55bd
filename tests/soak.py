#!/usr/bin/python3
"""Soak test of langdaugd (`make soak`; not part of `make test`).

Runs the real daemon on 127.0.0.1 (tests/ldtest.py's Daemon, the launcher of the
test suites, on its tiny random model and dataset, one worker) for --seconds
(SOAK_SECONDS, default 3600) under a mixed load, all at once:

  steady    one langdaug.Client pulling batches for the whole run, pausing 3 s every
            30 s (its granted batches then wait in the daemon: queue memory)
  churn     a Client that connects, takes 1-3 batches and says bye, every 2-5 s;
            its first-batch latency (Client created -> first batch) is recorded
  killed    a client process that pulls until SIGKILLed, every ~10 s
  reloads   SIGHUP after 5 s (the first reload starts libuv's 4 work threads, so it
            belongs to the warm-up), then every 30 s: three reloads of a rewritten model, then one of a
            corrupt file (must fail and keep the running model), then the model back
  hog       every ~45 s for 10 s, a client that asks for 16 batches of 64 and reads
            none (tests/ldtest.py's Hog): its batches hold queue memory until it closes
  garbage   every ~5 s, 3 raw TCP connections sending random bytes to each port and
            2 silent half-open connections held until the next round

Every --interval seconds (default 60) one CSV row (--csv) records the daemon's
resident memory (VmRSS), open file descriptors, threads (/proc/PID), queue memory
(status socket: queue_bytes at the row, and the largest of the polls every 2 s
since the previous row), and the median and max first-batch latency of the churn
clients of that interval, with counters. Progress goes to stderr.

Pass/fail. The first --warmup seconds (default: a sixth of the run, at least one
interval) are warm-up. The post-warm-up rows are split into thirds (first, last;
at least one row each, so at least 3 rows are needed). The run FAILS if
  rss           median(last) > median(first) + max(8 MiB, 10% of median(first))
  fds           median(last) > max(first) + 4   (churn connections come and go)
  threads       max(last)    > max(first)       (the thread count is fixed)
  queue memory  median(last) > median(first) + 1 MiB of the interval maxima, or
                any poll > max_queue_bytes
  first batch   median(last) > 2 * median(first) + 0.25 s
or if the daemon dies, the steady client or a churn client gets an error or waits
more than 30 s for a batch, a status request goes unanswered, a good reload does
not report ok (or a corrupt one does not fail), the final SIGTERM does not end in
exit 0, or the log has a sanitizer report. Exit status 0 = pass, 1 = fail.
"""
import argparse
import csv
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "client", "python"))
sys.path.insert(0, HERE)

from ldtest import Daemon, Hog, write_dataset, write_model  # noqa: E402  (the daemon launcher and fixtures)
from langdaug.client import Client  # noqa: E402

BATCH_WAIT = 30.0   # seconds any client may wait for a batch
MIB = 1 << 20


def proc_stats(pid):
    """(VmRSS bytes, threads, open fds) of a live process."""
    rss = threads = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, threads, len(os.listdir("/proc/%d/fd" % pid))


class Soak:
    def __init__(self, args):
        self.args = args
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.errors = []
        self.latencies = []            # first-batch seconds of this interval's churn clients
        self.queue_max = 0             # largest queue_bytes polled in this interval
        self.queue_over = []           # polls beyond max_queue_bytes
        self.counts = dict(steady=0, churn=0, killed=0, reloads_ok=0, reloads_failed=0, garbage=0, hogs=0)
        self.tmp = tempfile.mkdtemp(prefix="langdaug-soak-")
        self.data = os.path.join(self.tmp, "data")
        write_dataset(self.data, seed=1)
        self.model = os.path.join(self.tmp, "model.safetensors")
        write_model(self.model, seed=2)
        self.d = Daemon(self.tmp, self.model, self.data, log_level="info", drain_timeout=10,
                        extra=["--idle-timeout", "10"]).ready()
        self.endpoint = self.d.endpoint

    def error(self, what):
        with self.lock:
            self.errors.append("%.0f s: %s" % (time.monotonic() - self.t0, what))
        self.log(what)

    def log(self, what):
        print("soak %6.0f s: %s" % (time.monotonic() - self.t0, what), file=sys.stderr, flush=True)

    def guarded(self, fn):
        def run():
            try:
                fn()
            except Exception:  # any exception of a load thread fails the run
                self.error("%s: %s" % (fn.__name__, traceback.format_exc()))
        return threading.Thread(target=run, name=fn.__name__, daemon=True)

    # ------------------------------------------------------------ load

    def steady(self):
        with Client(self.endpoint, 4, targets=["B"], steps=[0, 2], timeout=BATCH_WAIT, name="soak-steady",
                    seed=1) as c:
            pause_at = time.monotonic() + 30
            while not self.stop.is_set():
                if time.monotonic() >= pause_at:
                    self.stop.wait(3)  # within idle_timeout (10 s): the session stays
                    pause_at = time.monotonic() + 30
                b = c.next()
                if len(b) != 4:
                    self.error("steady: a batch of %d samples" % len(b))
                with self.lock:
                    self.counts["steady"] += 1

    def churn(self):
        rng = random.Random(2)
        while not self.stop.wait(rng.uniform(2, 5)):
            t = time.monotonic()
            with Client(self.endpoint, 2, pairs=[("A", "B")], steps=[0, 4], timeout=BATCH_WAIT,
                        name="soak-churn", credits=2) as c:
                c.next()
                latency = time.monotonic() - t
                for _ in range(rng.randrange(3)):
                    c.next()
            with self.lock:
                self.latencies.append(latency)
                self.counts["churn"] += 1

    def killed(self):
        code = ("import sys\nfrom langdaug.client import Client\n"
                "c = Client(sys.argv[1], 2, targets=['B'], steps=[0, 2], timeout=30, name='soak-killed')\n"
                "while True:\n    c.next()\n    print(1, flush=True)\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path[:2]))
        rng = random.Random(3)
        while not self.stop.wait(rng.uniform(7, 13)):
            p = subprocess.Popen([sys.executable, "-c", code, self.endpoint], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, env=env)
            try:
                got = p.stdout.readline()  # one batch at least (the daemon answers in well under 30 s)
                if not got:
                    self.error("killed client: exited before its first batch")
                time.sleep(rng.uniform(0, 1))
            finally:
                p.kill()
                p.wait(10)
                p.stdout.close()
            with self.lock:
                self.counts["killed"] += 1

    def reloads(self):
        k = 0
        while not self.stop.wait(30 if k else 5):  # the first one early: it starts libuv's threads (warm-up)
            k += 1
            if k % 4 == 0:  # a corrupt model: the reload fails, the running model stays
                with open(self.model, "r+b") as f:
                    f.write(b"\xff" * 8)
                self.d.reload("failed")
                write_model(self.model, seed=100 + k)
                key = "reloads_failed"
            else:
                write_model(self.model + ".tmp", seed=100 + k)
                os.replace(self.model + ".tmp", self.model)
                self.d.reload("ok")
                key = "reloads_ok"
            with self.lock:
                self.counts[key] += 1

    def hogs(self):
        while not self.stop.wait(35):
            hog = Hog(self.endpoint, "B", 64, credits=16)
            try:
                self.stop.wait(10)
            finally:
                hog.close()
            with self.lock:
                self.counts["hogs"] += 1

    def garbage(self):
        rng = random.Random(4)
        held = []
        while not self.stop.wait(5):
            for c in held:
                c.close()
            held = []
            for port in (self.d.port, self.d.status_port):
                for _ in range(3):
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                            c.sendall(bytes([rng.randrange(255)]) +
                                      bytes(rng.randrange(256) for _ in range(rng.randrange(50, 400))))
                    except OSError:
                        pass  # the daemon may close first: that is its right
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            with self.lock:
                self.counts["garbage"] += 1
        for c in held:
            c.close()

    def queue_polls(self):
        while not self.stop.wait(2):
            st = self.d.status(timeout=10)
            with self.lock:
                self.queue_max = max(self.queue_max, st.queue_bytes)
                if st.queue_bytes > st.max_queue_bytes:
                    self.queue_over.append((round(time.monotonic() - self.t0), st.queue_bytes))

    # ------------------------------------------------------------ measuring

    def sample(self, writer, elapsed):
        rss, threads, fds = proc_stats(self.d.proc.pid)
        try:
            st = self.d.status(timeout=10)
        except AssertionError:
            self.error("a status request went unanswered")
            raise
        with self.lock:
            lat, self.latencies = self.latencies, []
            qmax, self.queue_max = max(self.queue_max, st.queue_bytes), 0
            counts = dict(self.counts)
        row = dict(elapsed_s=round(elapsed, 1), rss_bytes=rss, fds=fds, threads=threads,
                   queue_bytes=st.queue_bytes, queue_bytes_max=qmax, max_queue_bytes=st.max_queue_bytes,
                   first_batch_median_s=round(statistics.median(lat), 4) if lat else "",
                   first_batch_max_s=round(max(lat), 4) if lat else "", churn_clients=len(lat),
                   clients_now=len(st.clients), samples_sent=st.samples_sent, protocol_errors=st.protocol_errors,
                   **counts)
        writer.writerow(row)
        self.log("rss %.1f MiB, %d fds, %d threads, queue %.2f MiB (max %.2f), first batch %s s (%d), %d samples "
                 "sent" % (rss / MIB, fds, threads, st.queue_bytes / MIB, qmax / MIB, row["first_batch_median_s"],
                           len(lat), st.samples_sent))
        return row

    def run(self):
        args = self.args
        self.t0 = time.monotonic()
        threads = [self.guarded(f) for f in (self.steady, self.churn, self.killed, self.reloads, self.garbage, self.hogs,
                                             self.queue_polls)]
        for t in threads:
            t.start()
        rows = []
        with open(args.csv, "w", newline="") as f:
            writer = None
            n = max(1, int(args.seconds // args.interval))
            for i in range(1, n + 1):
                next_at = self.t0 + i * args.interval
                while time.monotonic() < next_at and self.d.proc.poll() is None:
                    time.sleep(min(1.0, max(0.0, next_at - time.monotonic())))
                if self.d.proc.poll() is not None:
                    self.error("the daemon died (exit %s)" % self.d.proc.returncode)
                    break
                if writer is None:
                    fields = ["elapsed_s", "rss_bytes", "fds", "threads", "queue_bytes", "queue_bytes_max",
                              "max_queue_bytes",
                              "first_batch_median_s", "first_batch_max_s", "churn_clients", "clients_now",
                              "samples_sent", "protocol_errors", *self.counts]
                    writer = csv.DictWriter(f, fieldnames=fields)
                    writer.writeheader()
                rows.append(self.sample(writer, time.monotonic() - self.t0))
                f.flush()
        self.stop.set()
        for t in threads:
            t.join(BATCH_WAIT + 30)
            if t.is_alive():
                self.error("load thread %s did not end" % t.name)
        if self.queue_over:
            self.error("queue memory beyond max_queue_bytes at (s, bytes) %s" % self.queue_over[:5])
        rc = self.d.stop(signal.SIGTERM, timeout=60)
        if rc != 0:
            self.error("the daemon exited %s on SIGTERM" % rc)
        log = self.d.log_text()
        if "Sanitizer" in log or "runtime error:" in log:
            self.error("sanitizer report in the daemon log")
        return rows


def verdict(rows, warmup, interval):
    """The growth checks of the module docstring: a list of failures (empty = pass)."""
    post = [r for r in rows if r["elapsed_s"] > warmup]
    if len(post) < 3:
        return ["only %d rows after the %.0f s warm-up: run longer (at least 3 intervals of %.0f s after it)" % (
            len(post), warmup, interval)]
    k = max(1, len(post) // 3)
    first, last = post[:k], post[-k:]

    def col(rs, key):
        return [float(r[key]) for r in rs if r[key] != ""]

    med = statistics.median
    out = []
    a, b = med(col(first, "rss_bytes")), med(col(last, "rss_bytes"))
    if b > a + max(8 * MIB, 0.10 * a):
        out.append("resident memory grew: median %.1f -> %.1f MiB" % (a / MIB, b / MIB))
    a, b = max(col(first, "fds")), med(col(last, "fds"))
    if b > a + 4:
        out.append("open file descriptors grew: max %d -> median %d" % (a, b))
    a, b = max(col(first, "threads")), max(col(last, "threads"))
    if b > a:
        out.append("threads grew: %d -> %d" % (a, b))
    a, b = med(col(first, "queue_bytes_max")), med(col(last, "queue_bytes_max"))
    if b > a + MIB:
        out.append("queue memory grew: median of the interval maxima %.2f -> %.2f MiB" % (a / MIB, b / MIB))
    fa, fb = col(first, "first_batch_median_s"), col(last, "first_batch_median_s")
    if fa and fb and med(fb) > 2 * med(fa) + 0.25:
        out.append("first-batch latency grew: median %.3f -> %.3f s" % (med(fa), med(fb)))
    if not fa or not fb:
        out.append("no first-batch latency measured in the first or last third")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 3600)))
    ap.add_argument("--interval", type=float, default=60.0, help="seconds between rows (default 60)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds (default: a sixth of the run, "
                    "at least one interval)")
    ap.add_argument("--csv", default="soak.csv")
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else max(args.interval, args.seconds / 6)
    s = Soak(args)
    try:
        rows = s.run()
    finally:
        if s.d.proc.poll() is None:
            s.d.stop(signal.SIGKILL)
    failures = s.errors + verdict(rows, warmup, args.interval)
    print("soak: %.0f s, %d rows in %s; steady %d batches, %d churn clients, %d killed clients, %d good and %d "
          "failed reloads, %d garbage rounds, %d hogs" % (
              args.seconds, len(rows), args.csv, s.counts["steady"], s.counts["churn"], s.counts["killed"],
              s.counts["reloads_ok"], s.counts["reloads_failed"], s.counts["garbage"], s.counts["hogs"]))
    for f in failures:
        print("soak FAILED: " + f)
    if not failures:
        print("soak passed (warm-up %.0f s)" % warmup)
        import shutil
        shutil.rmtree(s.tmp, ignore_errors=True)
    else:
        print("daemon log: " + s.d.log_path)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
