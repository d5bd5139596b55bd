"""langdaugd's step_size and noise keys: `auto` (the default) takes the
values the models were trained with (metadata train.step-size / train.noise),
at start and at every SIGHUP reload; a number in the config or on the command
line wins; models that disagree are refused; models without the keys get
the fallback 1 / 0.005; an unreadable value is an error naming file and key.

What a daemon uses is observed in its samples: chains from the same seed are
identical exactly when step size and noise are. Real daemon on 127.0.0.1
ports, fixtures and helpers of tests/ldtest.py; every wait is bounded and
every daemon started here is stopped here.
"""
import os
import unittest

import numpy as np

from ldtest import DAEMON, DaemonTestCase, pb, pull, recv_batch, run_daemon, write_model

TRAINED = {"train.step-size": "0.02", "train.noise": "0.003"}
AUTO = ("--step-size", "auto", "--noise", "auto")


def explicit(step_size, noise):
    return ("--step-size", str(step_size), "--noise", str(noise))


@unittest.skipUnless(os.access(DAEMON, os.X_OK), "langdaugd not built")
class ConfigTest(unittest.TestCase):
    def test_auto_is_the_default_and_prints_back(self):
        base = ["--model", "/m", "--data", "/d", "--print-config"]
        r = run_daemon(*base)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("\nstep_size = auto\nnoise = auto\n", r.stdout)
        r = run_daemon(*base, "--step-size", "5", "--noise", "0")
        self.assertIn("\nstep_size = 5\nnoise = 0\n", r.stdout)
        r = run_daemon(*base, "--step-size", "5", "--step-size", "auto")
        self.assertIn("\nstep_size = auto\n", r.stdout)
        example = run_daemon("--print-example-config").stdout
        self.assertIn("# Number, 1e-09..1000000, or auto.\n#step_size = auto\n", example)
        self.assertIn("# Number, 0..100, or auto.\n#noise = auto\n", example)

    def test_bad_values_are_named(self):
        for value, word in [("Auto", "neither auto nor a number"), ("", "neither auto nor a number"),
                            ("0", "out of range"), ("nan", "finite"), ("2e6", "out of range")]:
            r = run_daemon("--model", "/m", "--data", "/d", "--step-size", value, "--print-config")
            self.assertEqual(r.returncode, 2, value)
            self.assertIn("step_size", r.stderr, value)
            self.assertIn(word, r.stderr, value)


class TrainedLangevinTest(DaemonTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.trained = cls.path("trained.safetensors")
        write_model(cls.trained, seed=2, meta=TRAINED)  # the weights of cls.model, plus TRAINED

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp, name)

    def samples(self, d, seed=7):
        """Final snapshots of 4 chains A -> B (a fresh client each time)."""
        c = d.client()
        pull(c, credits=1, batch_size=4, pairs=[pb.Pair(source="A", target="B")], steps=[4], seed=seed)
        _, images, _ = recv_batch(c)
        c.close()
        return images.copy()

    def failed_start(self, **kw):
        """A daemon that must refuse to start: exit status 1; its log."""
        d = self.refused("", **kw)
        self.assertEqual(d.proc.returncode, 1, d.log_text())
        return d.log_text()

    def assert_same(self, a, b):
        np.testing.assert_array_equal(a, b)

    def assert_differ(self, a, b):
        self.assertFalse(np.array_equal(a, b), "same samples with other Langevin settings")

    def test_auto_takes_the_trained_values_and_a_number_wins(self):
        auto = self.start(model=self.trained, langevin=AUTO)
        same = self.start(model=self.model, langevin=explicit(0.02, 0.003))
        other_step = self.start(model=self.trained, langevin=explicit(0.01, 0.003))
        other_noise = self.start(model=self.trained, langevin=explicit(0.02, 0.001))
        got = self.samples(auto)
        self.assert_same(got, self.samples(same))
        self.assert_differ(got, self.samples(other_step))
        self.assert_differ(got, self.samples(other_noise))
        log = auto.log_text()
        self.assertIn("step_size = 0.02 (auto): train.step-size of model " + self.trained, log)
        self.assertIn("noise = 0.003 (auto): train.noise of model " + self.trained, log)
        self.assertEqual({e.key: e.value for e in auto.status().config}["step_size"], "auto")
        self.assertIn("step_size = 0.01, from the config", other_step.log_text())

    def test_a_config_file_value_wins_over_the_model(self):
        from_file = self.start(model=self.trained, config=[("step_size", "0.01")], langevin=())
        ref = self.start(model=self.model, langevin=explicit(0.01, 0.003))
        self.assert_same(self.samples(from_file), self.samples(ref))
        self.assertIn("step_size = 0.01, from the config", from_file.log_text())
        self.assertIn("noise = 0.003 (auto)", from_file.log_text())

    def test_models_without_the_keys_get_the_fallback(self):
        auto = self.start(model=self.model, langevin=())
        fallback = self.start(model=self.model, langevin=explicit(1, 0.005))
        other = self.start(model=self.model, langevin=explicit(0.5, 0.005))
        got = self.samples(auto)
        self.assert_same(got, self.samples(fallback))
        self.assert_differ(got, self.samples(other))
        log = auto.log_text()
        self.assertIn("step_size = 1 (auto): no model has train.step-size", log)
        self.assertIn("noise = 0.005 (auto): no model has train.noise", log)

    def test_models_that_disagree_are_refused(self):
        other = self.path("other-step.safetensors")
        write_model(other, seed=3, meta={"train.step-size": "0.03", "train.noise": "0.003"})
        without = self.path("without.safetensors")
        write_model(without, seed=4)
        log = self.failed_start(model=self.trained, extra=["--model", without, "--model", other], langevin=())
        self.assertIn("step_size = auto, but the models were trained with different values: %s has "
                      "train.step-size = 0.02, %s has 0.03; set step_size" % (self.trained, other), log)
        # noise agrees and the model without the keys does not count; a number settles it
        d = self.start(model=self.trained, extra=["--model", without, "--model", other],
                       langevin=("--step-size", "0.02"))
        self.assert_same(self.samples(d), self.samples(self.start(model=self.trained, langevin=AUTO)))
        self.assertIn("noise = 0.003 (auto): train.noise of model %s (2 of 3 models have it)" % self.trained,
                      d.log_text())

    def test_unreadable_values_are_errors_naming_file_and_key(self):
        for i, (key, value, word) in enumerate([("train.step-size", "fast", "'fast' is not a number"),
                                                ("train.noise", "1e9", "out of range"),
                                                ("train.step-size", "-1", "out of range")]):
            bad = self.path("bad%d.safetensors" % i)
            write_model(bad, seed=2, meta={**TRAINED, key: value})
            log = self.failed_start(model=bad, langevin=())
            self.assertIn("%s: metadata '%s': " % (bad, key), log)
            self.assertIn(word, log)
        # the value is not read when the config gives both numbers
        self.start(model=bad, langevin=explicit(0.02, 0.003))

    def test_every_reload_resolves_auto_and_a_failed_one_keeps_the_running_values(self):
        model = self.path("reload.safetensors")
        write_model(model, seed=2, meta=TRAINED)
        other = self.path("reload-other.safetensors")
        write_model(other, seed=3, meta={"train.step-size": "0.03"})
        d = self.start(model=None, config=[("model", model)], langevin=())
        before = self.samples(d)
        d.configure([("model", model), ("model", other)])
        st = d.reload("failed")
        for word in (model, other, "0.02", "0.03", "set step_size"):
            self.assertIn(word, st.last_reload)
        self.assert_same(self.samples(d), before)
        d.configure([("model", model)])
        write_model(model + ".tmp", seed=2, meta={**TRAINED, "train.step-size": "0.03"})
        os.replace(model + ".tmp", model)
        d.reload("ok")
        self.assertIn("step_size = 0.03 (auto): train.step-size of model " + model, d.log_text())
        after = self.samples(d)
        self.assert_differ(after, before)
        self.assert_same(after, self.samples(self.start(model=self.model, langevin=explicit(0.03, 0.003))))
        self.assertEqual(d.stop(), 0)


if __name__ == "__main__":
    unittest.main()
