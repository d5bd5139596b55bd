"""langdaugd under valgrind memcheck: serving a client, Prometheus scrapes
(metrics_listen), a reload and a drained stop leave no memory error and no
leak. Skips without valgrind,
and for sanitizer builds (AddressSanitizer and valgrind exclude each other).
"""
import os
import shutil
import signal
import subprocess
import unittest

from ldtest import DAEMON, DaemonTestCase, cmsg, families, free_port, http_get, pb, pull, recv_batch, value

VALGRIND = ("valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99")
SLOW = 120  # seconds any single event may take under valgrind


def sanitized(exe):
    r = subprocess.run(["ldd", exe], capture_output=True, text=True)
    return "libasan" in r.stdout or "libubsan" in r.stdout


@unittest.skipUnless(shutil.which("valgrind"), "valgrind not installed")
@unittest.skipUnless(os.access(DAEMON, os.X_OK), "langdaugd not built")
class ValgrindTest(DaemonTestCase):
    def test_serving_reloading_and_stopping_is_clean(self):
        if sanitized(DAEMON):
            self.skipTest("sanitizer build")
        mport = free_port()
        d = self.start(wrapper=VALGRIND, timeout=SLOW,
                       extra=["--steps", "0,2", "--metrics-listen", "127.0.0.1:%d" % mport])
        c = d.client()
        pull(c, credits=4, batch_size=4, targets=["B"], steps=[0, 2], encoding=pb.ENCODING_FLOAT16)
        for _ in range(8):
            recv_batch(c, timeout=SLOW)
            pull(c, credits=1)
        self.assertGreaterEqual(value(families(http_get(mport)[2]), "langdaug_batches_sent_total"), 8)
        self.assertEqual(http_get(mport, "/nothing")[0], 404)
        d.proc.send_signal(signal.SIGHUP)
        recv_batch(c, timeout=SLOW)
        c.send(cmsg(bye=pb.Bye()))
        self.assertEqual(d.stop(timeout=SLOW), 0, d.log_text())
        log = d.log_text()
        self.assertIn("ERROR SUMMARY: 0 errors", log, log)
        self.assertIn("no leaks are possible", log, log)


if __name__ == "__main__":
    unittest.main()
