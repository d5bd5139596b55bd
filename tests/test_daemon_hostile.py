"""The real daemon on 127.0.0.1 against peers that speak no ZeroMQ: rounds of raw
TCP garbage on both ports alternate with clean rounds; every status request must be
answered, and no first batch may be much slower than in the clean rounds.

Raw bytes whose first byte is not 0xFF look to libzmq like a ZMTP/1.0 peer (the
greeting's signature byte); a plain REP socket then loses about one request in three
after such peers (measured: 13 of 40 rounds with a bare pyzmq REP socket), so the
daemon must refuse unversioned peers on both sockets.

Half-open and slow peers (connections that send nothing, or the ZMTP greeting a
byte at a time), more of them than max_clients: real clients keep being served,
and the daemon drops each such peer after handshake_timeout."""
import random
import socket
import time
import unittest

import zmq

from langdaug.client import Client
from ldtest import SOURCE, TARGET, Fixture, pb

ROUNDS = 12            # garbage rounds, each followed by a clean round
STATUS_TIMEOUT = 2.0   # seconds; a healthy daemon answers in milliseconds
PEERS_PER_ROUND = 3


def garbage(port, rng):
    """One raw TCP connection that sends 50-400 random bytes (never a ZMTP/3 greeting) and closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
        data = bytes([rng.randrange(255)]) + bytes(rng.randrange(256) for _ in range(rng.randrange(50, 400)))
        try:
            c.sendall(data)
        except OSError:
            pass  # the daemon may close first: that is its right


def status_answered(ctx, endpoint):
    """Seconds until a StatusReply arrives, or None after STATUS_TIMEOUT."""
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect(endpoint)
        start = time.monotonic()
        s.send(pb.StatusRequest().SerializeToString())
        if not s.poll(int(STATUS_TIMEOUT * 1000)):
            return None
        reply = pb.StatusReply()
        reply.ParseFromString(s.recv())
        return time.monotonic() - start
    finally:
        s.close()


def first_batch_seconds(endpoint):
    with Client(endpoint, batch_size=2, pairs=[(SOURCE, TARGET)], timeout=20, seed=1) as c:
        start = time.monotonic()
        c.next(timeout=20)
        return time.monotonic() - start


class HostilePeersTest(unittest.TestCase):
    def setUp(self):
        self.fx = Fixture()
        if self.fx.missing:
            self.skipTest(self.fx.missing)
        self.sampler = self.fx.sampler()
        self.ctx = zmq.Context()

    def tearDown(self):
        if getattr(self, "sampler", None):
            self.sampler.stop()
            self.ctx.term()
        self.fx.close()

    def test_status_and_data_keep_serving_after_raw_garbage(self):
        rng = random.Random(1)
        data_port = int(self.sampler.endpoint.rsplit(":", 1)[1])
        status_port = int(self.sampler.status_endpoint.rsplit(":", 1)[1])
        self.assertIsNotNone(status_answered(self.ctx, self.sampler.status_endpoint), self.sampler.log_tail())
        missed, first = [], {"garbage": [], "clean": []}
        for r in range(2 * ROUNDS):
            kind = "garbage" if r % 2 == 0 else "clean"
            if kind == "garbage":
                for _ in range(PEERS_PER_ROUND):
                    garbage(status_port, rng)
                    garbage(data_port, rng)
            if status_answered(self.ctx, self.sampler.status_endpoint) is None:
                missed.append(r)
            first[kind].append(first_batch_seconds(self.sampler.endpoint))
        self.assertEqual(missed, [], "status requests not answered within %.0f s in rounds %s\n%s" % (
            STATUS_TIMEOUT, missed, self.sampler.log_tail()))
        self.assertLessEqual(max(first["garbage"]), 2 * max(first["clean"]) + 0.5, first)
        self.assertIsNone(self.sampler.proc.poll(), "the daemon died:\n" + self.sampler.log_tail())


class SlowPeersTest(unittest.TestCase):
    HANDSHAKE = 0.5   # seconds: the daemon's handshake_timeout here
    SILENT, DRIBBLING = 24, 8

    def setUp(self):
        self.fx = Fixture()
        if self.fx.missing:
            self.skipTest(self.fx.missing)
        self.sampler = self.fx.sampler(extra=["--max-clients", "4", "--handshake-timeout", str(self.HANDSHAKE)])
        self.ctx = zmq.Context()
        self.peers = []

    def tearDown(self):
        for c in self.peers:
            c.close()
        if getattr(self, "sampler", None):
            self.sampler.stop()
            self.ctx.term()
        self.fx.close()

    def connect(self, port):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.peers.append(c)
        return c

    def test_real_clients_are_served_and_slow_peers_dropped(self):
        data_port = int(self.sampler.endpoint.rsplit(":", 1)[1])
        status_port = int(self.sampler.status_endpoint.rsplit(":", 1)[1])
        self.assertIsNotNone(status_answered(self.ctx, self.sampler.status_endpoint), self.sampler.log_tail())  # up
        silent = [self.connect(p) for p in (data_port, status_port) for _ in range(self.SILENT // 2)]
        dribbling = [self.connect(data_port) for _ in range(self.DRIBBLING)]
        greeting = b"\xff" + b"\x00" * 8 + b"\x7f\x03\x01NULL"
        for c in dribbling:
            c.sendall(greeting[:1])
        self.assertLess(first_batch_seconds(self.sampler.endpoint), 10, self.sampler.log_tail())
        self.assertIsNotNone(status_answered(self.ctx, self.sampler.status_endpoint), self.sampler.log_tail())
        for i in range(1, 4):  # a byte now and then, slower than the handshake allows
            time.sleep(self.HANDSHAKE / 2)
            for c in dribbling:
                try:
                    c.sendall(greeting[i:i + 1])
                except OSError:
                    pass
        deadline = time.monotonic() + 10 * self.HANDSHAKE + 5
        for c in silent + dribbling:
            c.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                got = c.recv(4096)
                while got:  # the daemon's own greeting, then the close
                    got = c.recv(4096)
            except ConnectionResetError:
                pass
            except socket.timeout:
                self.fail("a peer that never completed its handshake is still connected after %.1f s" %
                          (10 * self.HANDSHAKE + 5))
        self.assertIsNotNone(status_answered(self.ctx, self.sampler.status_endpoint), self.sampler.log_tail())
        self.assertIsNone(self.sampler.proc.poll(), "the daemon died:\n" + self.sampler.log_tail())


if __name__ == "__main__":
    unittest.main()
