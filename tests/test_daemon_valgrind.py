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

import test_daemon as td
import test_daemon_metrics as tm
from ldtest import free_port
from test_daemon import pb


def sanitized(exe):
    r = subprocess.run(["ldd", exe], capture_output=True, text=True)
    return "libasan" in r.stdout or "libubsan" in r.stdout


@unittest.skipUnless(shutil.which("valgrind"), "valgrind not installed")
@unittest.skipUnless(os.access(td.DAEMON, os.X_OK), "langdaugd not built")
class ValgrindTest(td.DaemonTestCase):
    def test_serving_reloading_and_stopping_is_clean(self):
        if sanitized(td.DAEMON):
            self.skipTest("sanitizer build")
        mport = free_port()
        d = td.Daemon(self.tmp, model=self.model, data=self.data, extra=["--steps", "0,2", "--metrics-listen", "127.0.0.1:%d" % mport])
        # Daemon starts the binary directly: restart it under valgrind with the same arguments
        args = d.proc.args
        d.proc.kill()
        d.proc.wait(10)
        d.log.close()
        d.log = open(d.log_path, "wb")
        d.proc = subprocess.Popen(["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                                   "--error-exitcode=99", *args], stdout=d.log, stderr=subprocess.STDOUT)
        self.daemons.append(d)
        d.status(timeout=120)
        c = d.client()
        td.pull(c, credits=4, batch_size=4, targets=["B"], steps=[0, 2], encoding=pb.ENCODING_FLOAT16)
        for _ in range(8):
            td.recv_batch(c, timeout=120)
            td.pull(c, credits=1)
        self.assertGreaterEqual(tm.value(tm.families(tm.http_get(mport)[2]), "langdaug_batches_sent_total"), 8)
        self.assertEqual(tm.http_get(mport, "/nothing")[0], 404)
        d.proc.send_signal(signal.SIGHUP)
        td.recv_batch(c, timeout=120)
        c.send(td.cmsg(bye=pb.Bye()))
        self.assertEqual(d.stop(timeout=120), 0, d.log_text())
        log = d.log_text()
        self.assertIn("ERROR SUMMARY: 0 errors", log, log)
        self.assertIn("no leaks are possible", log, log)


if __name__ == "__main__":
    unittest.main()
