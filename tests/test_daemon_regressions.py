"""Behaviour the daemon promises and that a regression would quietly break, checked
against the real langdaugd (fixtures of tests/ldtest.py; 127.0.0.1, bounded waits):

- the drain on SIGTERM: a client mid-stream gets the batch whose chains are running
  when the signal comes, a new pull during the drain is refused as UNAVAILABLE, and
  the daemon then exits 0 on its own (within drain_timeout plus a margin); a second
  SIGTERM during a drain stops at once, still exiting 0;
- epoch mode serves every tile of the source domain exactly once per epoch: the
  tiles the engine cuts (evenly spread positions covering each image, see
  daemon/ldd_engine.c), with the pixels of those crops, shuffled anew each epoch.
"""
import os
import signal
import subprocess
import time
import unittest

import numpy as np

from ldtest import WAIT, DaemonTestCase, S, expect_error, nothing_within, pb, pull, recv_batch, reference_crop

# A long chain: one job of 2 chains to this step takes seconds (the test's margin
# between the signal and the end of the running job), never a timing assertion.
LONG_STEP = 12000


def wait_exit(proc, seconds):
    """proc's exit status, or None if still running after `seconds`."""
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return None


class DrainTest(DaemonTestCase):
    DRAIN_TIMEOUT = 120  # seconds: never reached here; the drain ends when the running job does

    def start_long(self):
        # The test's client is silent while the long jobs run (up to its 300 s waits on a loaded machine): an
        # idle timeout longer than any wait, so its credits never expire mid-test (they did at the default 60 s).
        return self.start(extra=["--drain-timeout", str(self.DRAIN_TIMEOUT), "--max-steps", str(LONG_STEP),
                                 "--chain-batch", "2", "--idle-timeout", "900"])

    def wait_draining(self, d):
        deadline = time.monotonic() + WAIT
        while not d.status().draining:
            if time.monotonic() > deadline:
                self.fail("the daemon never reported draining; log:\n" + d.log_text())
            time.sleep(0.02)

    def test_sigterm_delivers_the_batch_in_flight_then_exits_zero(self):
        d = self.start_long()
        c = d.client()
        # one worker, chain_batch 2, batch_size 2: one job is one batch; 4 credits queue 4 jobs
        pull(c, credits=4, batch_size=2, pairs=[pb.Pair(source="A", target="B")], steps=[LONG_STEP], seed=5)
        first, _, _ = recv_batch(c, timeout=300)
        self.assertEqual(first.sequence, 0)
        # the worker took the next job as soon as it handed in the first
        d.proc.send_signal(signal.SIGTERM)
        self.wait_draining(d)
        self.assertIsNone(d.proc.poll(), "the daemon exited while its job was running:\n" + d.log_text())
        late = d.client()
        pull(late, credits=1, batch_size=2, targets=["B"], steps=[0])
        text = expect_error(late, pb.ERROR_UNAVAILABLE)
        self.assertIn("shutting down", text)
        b, images, masks = recv_batch(c, timeout=300)
        self.assertEqual((b.sequence, b.n), (1, 2), "the batch in flight, whole")
        self.assertEqual([s.step for s in b.samples], [LONG_STEP] * 2)
        self.assertTrue(np.all(np.isfinite(images)))
        self.assertEqual(masks.shape, (2, S, S))
        rc = wait_exit(d.proc, WAIT + 30)
        self.assertEqual(rc, 0, "the daemon must exit 0 once the running job is sent; log:\n" + d.log_text())
        # the queued jobs were dropped: nothing else came
        self.assertTrue(nothing_within(c, 0.2))
        self.assertNotIn("drain timeout", d.log_text(), "the drain ended by itself, not by its timeout")

    def test_second_sigterm_stops_at_once(self):
        d = self.start_long()
        c = d.client()
        pull(c, credits=2, batch_size=2, pairs=[pb.Pair(source="A", target="B")], steps=[LONG_STEP], seed=5)
        recv_batch(c, timeout=300)
        d.proc.send_signal(signal.SIGTERM)
        self.wait_draining(d)
        d.proc.send_signal(signal.SIGTERM)
        # a job of LONG_STEP steps is still running: the second signal does not wait for it
        rc = wait_exit(d.proc, WAIT + 30)
        self.assertEqual(rc, 0, d.log_text())
        self.assertTrue(nothing_within(c, 0.2), "no batch after the second signal")


def tiles(length, size):
    """Tile positions along one side: one tile centred if the side is at most `size`,
    else ceil(length / size) positions spread evenly from 0 to length - size."""
    if length <= size:
        return [-((size - length) // 2)]
    n = -(-length // size)
    return [i * (length - size) // (n - 1) for i in range(n)]


def expected_tiles(root, domain, size):
    from PIL import Image
    out = set()
    folder = os.path.join(root, domain, "image")
    for name in sorted(os.listdir(folder)):
        with Image.open(os.path.join(folder, name)) as im:
            w, h = im.size
        out |= {("image/" + name, x, y) for y in tiles(h, size) for x in tiles(w, size)}
    return out


class EpochTest(DaemonTestCase):
    def test_every_tile_exactly_once_per_epoch_with_its_pixels(self):
        want = expected_tiles(self.data, "A", S)
        self.assertEqual(len(want), 9, "the fixture: 24x20 and 20x24 images give 4 tiles each, 16x16 one")
        d = self.start()
        c = d.client()
        n_batches, batch = 5, 8  # 40 chains: four whole epochs of 9 tiles and part of a fifth
        pull(c, credits=n_batches, batch_size=batch, pairs=[pb.Pair(source="A", target="B")], steps=[0],
                epoch=True, seed=3, encoding=pb.ENCODING_FLOAT32)
        samples = []
        for _ in range(n_batches):
            b, images, masks = recv_batch(c)
            for i, s in enumerate(b.samples):
                samples.append((s.chain_id, s.epoch, (s.source_file, s.crop_x, s.crop_y), images[i], masks[i]))
        samples.sort(key=lambda t: t[0])
        self.assertEqual([t[0] for t in samples], list(range(len(samples))), "chain ids of one session")
        epochs = [t[1] for t in samples]
        self.assertEqual(epochs, sorted(epochs), "a chain of a later epoch came before one of an earlier")
        self.assertEqual(epochs, [1 + i // len(want) for i in range(len(samples))],
                         "each epoch is exactly as many chains as there are tiles")
        orders = []
        for e in range(1, 5):
            served = [t[2] for t in samples if t[1] == e]
            self.assertEqual(len(served), len(set(served)), "epoch %d repeats a tile: %s" % (e, served))
            self.assertEqual(set(served), want, "epoch %d serves other tiles than the dataset's" % e)
            orders.append(served)
        self.assertGreater(len({tuple(o) for o in orders}), 1, "every epoch in the same order: not shuffled")
        partial = [t[2] for t in samples if t[1] == 5]
        self.assertEqual(len(partial), len(set(partial)), "the fifth epoch repeats a tile")
        for _, _, (name, x, y), image, mask in samples:  # step 0: the crop itself
            ref_img, ref_mask = reference_crop(self.data, "A", name, x, y)
            np.testing.assert_allclose(image, ref_img, atol=1e-6, err_msg="pixels of %s at (%d, %d)" % (name, x, y))
            np.testing.assert_array_equal(mask, ref_mask)


if __name__ == "__main__":
    unittest.main(verbosity=2)
