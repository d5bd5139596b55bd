"""Sampler fleets in the Python client (langdaug.client.Client), against real
langdaugd daemons on 127.0.0.1 (the fixtures of tests/ldtest.py): malformed
names and hosts files refused naming what is wrong; a name whose injected
resolver answers with changing sets of daemons (told apart by port) is
followed: samplers that appear serve with the next id and their own seed,
ones that vanish are dropped, a failing resolution changes nothing, an empty
answer leaves a timeout that says why; a rewritten hosts file, whose names go
through the system resolver (localhost), and a malformed one that is kept and
warned about once; the Kubernetes example's langdaugd.conf is one the daemon
accepts, with the paths its volumes mount, and the Slurm script parses.
Every wait is bounded.
"""
import logging
import os
import re
import subprocess
import tempfile
import time
import unittest

from langdaug.client import Client, LangDAugError, session_seed
from ldtest import DAEMON, DOMAINS, HERE, WAIT, SamplerTestCase

TARGET = DOMAINS[1]
INTERVAL = 0.2  # seconds between resolutions in these tests


class FakeDns:
    """An injected resolver: every name is 127.0.0.1 at the ports listed now, or fails."""

    def __init__(self, ports):
        self.ports, self.fail, self.calls = list(ports), None, 0

    def __call__(self, host, port):
        self.calls += 1
        if self.fail:
            raise LookupError("name %r: the test's resolver fails" % host)
        return [("127.0.0.1", p) for p in self.ports]


def fleet_client(endpoint, resolver=None, **kw):
    args = dict(targets=[TARGET], credits=2, timeout=5.0, heartbeat=0.2, dead=1.0, resolve_interval=INTERVAL,
                resolver=resolver)
    args.update(kw)
    return Client(endpoint, 2, **args)


def pull_until_from(client, ident):
    """Pulls until a batch from sampler `ident` arrives (bounded); returns its first sample's seed."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        batch = client.next()
        if batch.endpoint == ident:
            return batch.meta[0]["seed"]
    raise AssertionError("no batch from sampler %d within %.0f s: %s" % (ident, WAIT, client.stats()))


def fleet(client):
    """The client's samplers now, as [(id, port)] in position order."""
    return [(s["id"], int(s["endpoint"].rsplit(":", 1)[1])) for s in client.stats()]


def write_hosts(path, text):
    """Replaces the file's content at once (as a job script should)."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class SpecTest(unittest.TestCase):
    def test_malformed_endpoints_are_refused(self):
        for endpoint, word in (("tcp://sampler", "is not HOST:PORT"), ("tcp://sampler:0", "port '0'"),
                               ("tcp://sampler:65536", "port '65536'"), ("tcp://[::1:5555", "is not [IPV6]:PORT"),
                               ("tcp://[fe80::zz]:5555", "not an IPv6 address"),
                               ("tcp://sam pler:5555", "'sam pler' is not a host name"),
                               ("tcp://:5555", "host is empty"), ("file://hosts", "absolute path")):
            with self.assertRaises(ValueError) as cm:
                fleet_client(endpoint, FakeDns([]))
            self.assertIn(word, str(cm.exception))
            self.assertIn(endpoint, str(cm.exception))
        with self.assertRaisesRegex(ValueError, "resolve_interval"):
            fleet_client("tcp://samplers.test:5555", FakeDns([]), resolve_interval=-1)

    def test_resolved_once_a_name_or_file_without_sampler_is_an_error(self):
        dns = FakeDns([])
        dns.fail = True
        with self.assertRaisesRegex(LangDAugError, "samplers.test.*the test's resolver fails"):
            fleet_client("tcp://samplers.test:5555", dns, resolve_interval=0)
        with self.assertRaisesRegex(LangDAugError, "/nonexistent/langdaug-hosts"):
            fleet_client("file:///nonexistent/langdaug-hosts", dns, resolve_interval=0)

    def test_waits_for_samplers_and_says_why_there_are_none(self):
        dns = FakeDns([])
        dns.fail = True
        with fleet_client("tcp://samplers.test:5555", dns, resolve_interval=0.1, timeout=0.3) as c:
            self.assertEqual(c.stats(), [])
            with self.assertRaisesRegex(TimeoutError, "no sampler; tcp://samplers.test:5555: name 'samplers.test'"):
                c.next()
            self.assertGreaterEqual(dns.calls, 3)  # retried while waiting


class FollowsTheResolverTest(SamplerTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.others = [cls.fx.sampler() for _ in range(2)] if cls.sampler else []

    @classmethod
    def tearDownClass(cls):
        for s in cls.others:
            s.stop()
        super().tearDownClass()

    def test_samplers_join_and_leave(self):
        a, b, c = [s.port for s in [self.sampler] + self.others]
        lo, hi = sorted((a, b))
        dns = FakeDns([b, a])
        with fleet_client("tcp://samplers.test:5555", dns, seed=9) as client:
            self.assertEqual(fleet(client), [(0, lo), (1, hi)])  # ids in sorted address order
            self.assertEqual(pull_until_from(client, 0), 9)
            self.assertEqual(pull_until_from(client, 1), session_seed(9, 1, 0))
            self.assertEqual(client.stats()[0]["source"], "tcp://samplers.test:5555")

            dns.ports = [hi, c]  # one goes, one appears with the next id and its own seed
            self.assertEqual(pull_until_from(client, 2), session_seed(9, 2, 0))
            self.assertEqual(fleet(client), [(1, hi), (2, c)])

            dns.fail = True  # a failing resolution changes nothing
            calls = dns.calls
            while dns.calls < calls + 2:
                pull_until_from(client, 1)
            self.assertEqual(fleet(client), [(1, hi), (2, c)])

            dns.fail, dns.ports = False, []  # an empty answer drops every sampler
            with self.assertRaisesRegex(TimeoutError, "no sampler; tcp://samplers.test:5555: lists no sampler"):
                while True:
                    client.next()
            self.assertEqual(fleet(client), [])

    def test_hosts_file(self):
        path = os.path.join(self.fx.dir, "hosts")
        first, second = self.sampler.port, self.others[0].port
        write_hosts(path, "# written by the job script\n\n  127.0.0.1:%d  \n" % first)
        with fleet_client("file://" + path) as client:
            pull_until_from(client, 0)
            write_hosts(path, "tcp://localhost:%d\n" % second)  # a name, through the system resolver
            pull_until_from(client, 1)
            self.assertEqual(fleet(client), [(1, second)])

            with self.assertLogs("langdaug", logging.WARNING) as logs:
                write_hosts(path, "127.0.0.1:1\nnode-7\n")
                until = time.monotonic() + 3 * INTERVAL
                while time.monotonic() < until:
                    pull_until_from(client, 1)
            self.assertEqual(fleet(client), [(1, second)])
            said = [m for m in logs.output if "node-7" in m]
            self.assertEqual(len(said), 1, logs.output)
            self.assertIn("hosts:2: 'node-7' is not HOST:PORT; 1 of its samplers kept", said[0])


class ExamplesTest(unittest.TestCase):
    FLEET = os.path.join(os.path.dirname(HERE), "examples", "fleet")

    def test_kubernetes_config_is_accepted_and_matches_the_mounts(self):
        if not os.access(DAEMON, os.X_OK):
            self.skipTest("%s is not built yet" % DAEMON)
        with open(os.path.join(self.FLEET, "kubernetes.yaml")) as f:
            text = f.read()
        block = re.search(r"^  langdaugd.conf: \|\n((?:    .*\n|\n)+)", text, re.M).group(1)
        with tempfile.NamedTemporaryFile("w", suffix=".conf") as conf:
            conf.write("".join(line[4:] + "\n" for line in block.splitlines()))
            conf.flush()
            r = subprocess.run([DAEMON, "--config", conf.name, "--print-config"], capture_output=True, text=True,
                               timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        for key, value in (("bind", "tcp://*:5555"), ("curve_secret_key_file", "/etc/langdaug/server/server.key"),
                           ("curve_allowed_keys_dir", "/etc/langdaug/clients")):
            self.assertIn("%s = %s\n" % (key, value), r.stdout)
        for mount in ("/etc/langdaug/server", "/etc/langdaug/clients", "/models", "/data"):
            self.assertIn("mountPath: %s," % mount, text)

    def test_slurm_script_parses(self):
        r = subprocess.run(["bash", "-n", os.path.join(self.FLEET, "slurm-langdaug.sbatch")], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
