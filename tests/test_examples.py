"""The C trainer-side example (examples/pull_batches.c) against two real samplers
on 127.0.0.1: it pulls from both, consumes every sample, and reports a
daemon's refusal as an error naming the domain."""
import os
import re
import subprocess
import unittest

from ldtest import BUILD, DOMAINS, WAIT, SamplerTestCase

EXAMPLE = os.path.join(BUILD, "examples", "pull_batches")
BATCH = 8  # the example's batch size


class PullBatchesTest(SamplerTestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(EXAMPLE, os.X_OK):
            cls.skip_reason = "%s is not built" % EXAMPLE
        super().setUpClass()
        cls.second = cls.fx.sampler() if cls.sampler else None
        for sampler in (cls.sampler, cls.second):
            if sampler:  # both up before the example starts, so that both can serve it
                sampler.ready()

    @classmethod
    def tearDownClass(cls):
        if cls.second:
            cls.second.stop()
        super().tearDownClass()

    def run_example(self, targets, batches):
        endpoints = ",".join((self.sampler.endpoint, self.second.endpoint))
        return subprocess.run([EXAMPLE, endpoints, targets, str(batches)], capture_output=True, text=True,
                              timeout=4 * WAIT)

    def test_pulls_from_both_samplers_and_consumes_every_sample(self):
        batches = 40
        r = self.run_example(DOMAINS[1], batches)
        self.assertEqual(r.returncode, 0, r.stderr)
        pairs = re.findall(r"^pair (\S+)>(\S+) +samples +(\d+) +mean pixel ([-+.\d]+) +foreground ([.\d]+)$",
                           r.stdout, re.M)
        self.assertTrue(pairs, r.stdout)
        self.assertEqual(sum(int(p[2]) for p in pairs), batches * BATCH)
        for source, target, _, mean, fg in pairs:
            self.assertEqual(target, DOMAINS[1])
            self.assertIn(source, DOMAINS)
            self.assertNotEqual(source, target)
            self.assertTrue(-1 <= float(mean) <= 1, mean)
            self.assertTrue(0 <= float(fg) <= 1, fg)
        served = re.findall(r"^sampler (\S+): \w+, (\d+) batches, (\d+) samples$", r.stdout, re.M)
        self.assertEqual(len(served), 2, r.stdout)
        self.assertEqual(sum(int(s[1]) for s in served), batches)
        for endpoint, nb, ns in served:
            self.assertGreater(int(nb), 0, "%s served nothing:\n%s" % (endpoint, r.stdout))
            self.assertEqual(int(ns), int(nb) * BATCH)

    def test_unknown_domain_is_an_error_naming_it(self):
        r = self.run_example("no_such_domain", 1)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no_such_domain", r.stderr)


if __name__ == "__main__":
    unittest.main()
