"""Configured limits of langdaugd that test_daemon.py does not cover:
max_clients, max_queue_memory (batch admission and progress under a tight
budget) and oversized messages on the status socket. Real daemon on
loopback ports, fixtures and helpers of tests/ldtest.py.
"""
import time
import unittest

import zmq

from ldtest import WAIT, C, DaemonTestCase, S, cmsg, expect_error, nothing_within, pb, pull, recv_batch

# Memory of one sample while the daemon holds it (ldd_server.c sample_bytes):
# float32 pixels + mask + energy.
SAMPLE_BYTES = C * S * S * 4 + S * S + 4


class LimitsTest(DaemonTestCase):
    def test_max_clients(self):
        d = self.start(extra=["--max-clients", "2"])
        a, b, c = d.client(), d.client(), d.client()
        for sock in (a, b):
            pull(sock, credits=1, batch_size=1, targets=["B"], steps=[0])
            recv_batch(sock)
        pull(c, credits=1, batch_size=1, targets=["B"], steps=[0])
        self.assertIn("max_clients = 2", expect_error(c, pb.ERROR_LIMIT))
        c.send(cmsg(hello=pb.Hello(client_name="third")))
        expect_error(c, pb.ERROR_LIMIT)
        self.assertEqual(len(d.status().clients), 2)
        a.send(cmsg(bye=pb.Bye()))
        deadline = time.monotonic() + WAIT
        while len(d.status().clients) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        pull(c, credits=1, batch_size=1, targets=["B"], steps=[0])
        recv_batch(c)  # a freed place is taken
        pull_b = d.client()
        pull(pull_b, credits=1, batch_size=1, targets=["B"], steps=[0])
        expect_error(pull_b, pb.ERROR_LIMIT)

    def test_a_batch_beyond_the_queue_memory_is_refused(self):
        d = self.start(extra=["--max-queue-memory", "1", "--max-batch", "4096"])
        fits = (1 << 20) // SAMPLE_BYTES
        c = d.client()
        pull(c, credits=1, batch_size=fits + 1, targets=["B"], steps=[0])
        text = expect_error(c, pb.ERROR_LIMIT)
        self.assertIn("max_queue_memory = 1 MiB", text)
        pull(c, credits=1, batch_size=fits, targets=["B"], steps=[0])
        b, _, _ = recv_batch(c)
        self.assertEqual(b.n, fits)

    def test_clients_share_a_tight_queue_memory_without_deadlock(self):
        """The budget holds one batch of either client at a time: chains for
        a batch start only when its memory is reserved, so the two never
        hold half-made batches that block each other."""
        fits = (1 << 20) // SAMPLE_BYTES
        batch = fits * 6 // 10
        d = self.start(extra=["--max-queue-memory", "1", "--queue-capacity", "8"])
        a, b = d.client(), d.client()
        for sock in (a, b):
            sock.setsockopt(zmq.RCVHWM, 2)
            pull(sock, credits=3, batch_size=batch, targets=["B"], steps=[0])
        got = {id(a): 0, id(b): 0}
        deadline = time.monotonic() + 3 * WAIT
        most_ahead = 0
        while min(got.values()) < 3 and time.monotonic() < deadline:
            for sock in (a, b):
                if got[id(sock)] < 3 and sock.poll(20):
                    bt, _, _ = recv_batch(sock)
                    self.assertEqual(bt.n, batch)
                    got[id(sock)] += 1
            st = d.status()
            most_ahead = max(most_ahead, st.samples_produced - st.samples_sent)
        self.assertEqual(list(got.values()), [3, 3])
        # never more than one reserved batch made ahead of what was sent
        self.assertLessEqual(most_ahead, batch)

    def test_oversized_status_requests_do_not_hurt(self):
        d = self.start(extra=["--max-message-size", "1024"])
        for size in (2000, 1 << 20):  # answered with an error; dropped by ZeroMQ (> 4x + 4 KiB)
            s = d.ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(d.status_endpoint)
            s.send(b"\x08\x01" + b"\x00" * size)
            if s.poll(2000):
                r = pb.StatusReply()
                r.ParseFromString(s.recv())
                self.assertEqual(r.error.code, pb.ERROR_MALFORMED)
            else:
                self.assertGreater(size, 4 * 1024 + 4096, "a request within the limit got no reply")
            s.close()
        self.assertEqual(d.status().version, 1)
        c = d.client()  # the data socket drops a peer sending beyond 4x + 4 KiB
        c.send(b"\x0a" + b"\xff" * (1 << 20))
        self.assertTrue(nothing_within(c, 1.0))
        self.assertIsNone(d.proc.poll())
        ok = d.client()
        pull(ok, credits=1, batch_size=1, targets=["B"], steps=[0])
        recv_batch(ok)


if __name__ == "__main__":
    unittest.main()
