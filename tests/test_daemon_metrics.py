"""Prometheus metrics of langdaugd, parsed with Debian's python3-prometheus-client
(prometheus_client.parser): `langdaug status --prometheus` against a real daemon, and the
daemon's own GET /metrics on metrics_listen (127.0.0.1), after pulling samples, checked
against the status reply taken around it; other paths and methods; off by default (the
daemon listens on nothing but its two ZeroMQ ports); bad metrics_listen values refused
naming the key; a silent HTTP peer and oversized headers cost the sampler nothing.
"""
import json
import os
import re
import socket
import unittest

from ldtest import (CLI, DAEMON, HERE, WAIT, DaemonTestCase, cmsg, families, free_port, http_get, pb, pull,
                    recv_batch, recv_msg, run_cli, run_daemon, value)

NAME = 'quote " backslash \\ newline \n end'  # a client name that needs every label escape


def listening_ports(pid):
    """TCP ports process pid listens on (its socket inodes among /proc/net/tcp{,6} LISTEN rows)."""
    inodes = set()
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


class MetricsTestCase(DaemonTestCase):
    def client_with_samples(self, d, batches=3):
        """A client named NAME that pulled `batches` batches of 2 samples; returns its socket."""
        c = d.client()
        self.addCleanup(c.close)
        c.send(cmsg(hello=pb.Hello(min_version=1, max_version=1, client_name=NAME)))
        recv_msg(c)
        pull(c, credits=batches, batch_size=2, targets=["B"], steps=[0, 2])
        for _ in range(batches):
            recv_batch(c)
        return c

    def check_against_status(self, fams, before, after):
        """Counters of fams lie between the status replies before and after; fixed values match."""
        for name, field in (("langdaug_samples_produced_total", "samples_produced"),
                            ("langdaug_samples_sent_total", "samples_sent"),
                            ("langdaug_batches_sent_total", "batches_sent")):
            v = value(fams, name)
            self.assertTrue(getattr(before, field) <= v <= getattr(after, field),
                            (name, getattr(before, field), v, getattr(after, field)))
        self.assertGreaterEqual(value(fams, "langdaug_samples_sent_total"), 6)
        self.assertEqual(value(fams, "langdaug_queue_max_bytes"), after.max_queue_bytes)
        self.assertGreaterEqual(value(fams, "langdaug_queue_bytes"), 0)
        self.assertEqual(value(fams, "langdaug_clients_connected"), 1)
        self.assertEqual(value(fams, "langdaug_client_samples_sent_total", name=NAME), 6)
        self.assertEqual(value(fams, "langdaug_client_batches_sent_total", name=NAME), 3)
        self.assertEqual(value(fams, "langdaug_info", version=after.server_version), 1)
        self.assertEqual(value(fams, "langdaug_model_info", hash=self.model_hash, path=self.model), 1)
        self.assertEqual(value(fams, "langdaug_workers"), 1)
        self.assertEqual(value(fams, "langdaug_curve_enabled", socket="data"), 0)
        self.assertNotIn("langdaug_refused_handshakes_total", fams, "only with CURVE, as in the status reply")
        self.assertNotIn("langdaug_last_reload_success", fams, "no reload yet")
        energy = [s for s in fams["langdaug_energy_samples_total"] if s.labels["target"] == "B"]
        self.assertTrue(energy and all(s.labels["source"] for s in energy), energy)
        self.assertGreater(sum(s.value for s in energy), 0)
        for s in fams["langdaug_samples_produced_per_second"]:
            self.assertIn(s.labels["window"], ("1m", "5m", "15m"))


@unittest.skipUnless(os.access(CLI, os.X_OK), "langdaug not built")
class CliPrometheusTest(MetricsTestCase):
    def test_status_prometheus_parses_and_matches_the_status(self):
        d = self.start()
        self.client_with_samples(d)
        before = d.status()
        r = run_cli("status", "--prometheus", d.status_endpoint, timeout=WAIT)
        after = d.status()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check_against_status(families(r.stdout), before, after)
        st = d.reload("ok")
        fams = families(run_cli("status", "--prometheus", d.status_endpoint, timeout=WAIT).stdout)
        self.assertEqual(value(fams, "langdaug_last_reload_success"), 1)
        self.assertGreaterEqual(value(fams, "langdaug_last_reload_age_seconds"), st.last_reload_age_s)
        both = run_cli("status", "--prometheus", "--json", d.status_endpoint, timeout=WAIT)
        self.assertEqual(both.returncode, 2)
        self.assertIn("--json and --prometheus", both.stderr)
        self.assertEqual(d.stop(), 0)


class EndpointTest(MetricsTestCase):
    def start_with_metrics(self, address="127.0.0.1"):
        port = free_port()
        d = self.start(extra=["--metrics-listen", "%s:%d" % (address, port)])
        return d, port

    def test_get_metrics_counts_what_the_status_says(self):
        d, port = self.start_with_metrics()
        status, headers, text = http_get(port)
        self.assertEqual(status, 200)
        self.assertEqual(headers["Content-Type"], "text/plain; version=0.0.4; charset=utf-8")
        self.assertEqual(value(families(text), "langdaug_samples_sent_total"), 0)
        self.client_with_samples(d)
        before = d.status()
        status, _, text = http_get(port)
        after = d.status()
        self.assertEqual(status, 200)
        self.check_against_status(families(text), before, after)
        self.assertEqual(listening_ports(d.proc.pid), {d.port, d.status_port, port})
        with open(os.path.join(HERE, "..", "examples", "grafana-langdaug.json")) as f:
            exprs = [t["expr"] for p in json.load(f)["panels"] for t in p["targets"]]
        used = set(re.findall(r"\blangdaug_\w+", " ".join(exprs)))
        curve_only = {"langdaug_refused_handshakes_total"}
        self.assertLessEqual(used - curve_only, set(families(text)), "the Grafana dashboard uses served names")
        self.assertEqual(d.stop(), 0)

    def test_other_paths_and_methods(self):
        d, port = self.start_with_metrics()
        for path in ("/", "/metric", "/metrics/x", "/favicon.ico"):
            self.assertEqual(http_get(port, path)[0], 404, path)
        status, headers, _ = http_get(port, method="POST")
        self.assertEqual(status, 405)
        self.assertIn("GET", headers["Allow"])
        self.assertEqual(http_get(port, method="DELETE")[0], 405)
        self.assertEqual(http_get(port, method="HEAD")[0], 200)
        status, _, _ = http_get(port, headers={"X-Big": "x" * 20000})
        self.assertGreaterEqual(status, 400, "headers beyond the request bound are refused")
        self.assertEqual(http_get(port)[0], 200)
        self.assertEqual(d.stop(), 0)

    def test_silent_http_peers_do_not_stall_the_sampler(self):
        d, port = self.start_with_metrics()
        peers = []
        for i in range(8):  # connect and send nothing, or half a request line
            s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            if i % 2:
                s.sendall(b"GET /metr")
            peers.append(s)
        self.addCleanup(lambda: [s.close() for s in peers])
        self.client_with_samples(d)  # the sampler serves a real client meanwhile
        self.assertEqual(http_get(port)[0], 200, "another scrape is answered")
        self.assertGreaterEqual(d.status().samples_sent, 6)
        self.assertEqual(d.stop(), 0)

    def test_non_loopback_address_is_a_warning(self):
        d, port = self.start_with_metrics("0.0.0.0")
        self.assertEqual(http_get(port)[0], 200)
        self.assertEqual(d.stop(), 0)
        self.assertRegex(d.log_text(), r"metrics_listen 0\.0\.0\.0:\d+ is not a loopback address")

    def test_off_by_default(self):
        d = self.start()
        self.assertIn(("metrics_listen", ""), [(c.key, c.value) for c in d.status().config])
        self.assertEqual(listening_ports(d.proc.pid), {d.port, d.status_port})
        self.assertEqual(d.stop(), 0)


@unittest.skipUnless(os.access(DAEMON, os.X_OK), "langdaugd not built")
class BadListenTest(DaemonTestCase):
    def test_bad_values_are_refused_naming_the_key(self):
        for bad in ("9464", "localhost:9464", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:94x",
                    "[::1:9464", "::1:9464", "1.2.3:9464", ":9464"):
            r = run_daemon("--metrics-listen", bad, "--print-config")
            self.assertNotEqual(r.returncode, 0, bad)
            self.assertIn("metrics_listen: '%s'" % bad, r.stderr, bad)
        good = run_daemon("--metrics-listen", "[::1]:9464", "--model", self.model, "--data", self.data,
                          "--print-config")
        self.assertIn("metrics_listen = [::1]:9464\n", good.stdout, good.stderr)

    def test_a_port_in_use_is_refused_naming_the_key(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            d = self.refused("on a metrics port in use",
                             extra=["--metrics-listen", "127.0.0.1:%d" % taken.getsockname()[1]])
            self.assertNotEqual(d.proc.returncode, 0)
        self.assertRegex(d.log_text(), r"metrics_listen: cannot listen on 127\.0\.0\.1:\d+: Address already in use")


if __name__ == "__main__":
    unittest.main()
