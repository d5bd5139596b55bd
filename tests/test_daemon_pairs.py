"""langdaugd serving per-pair models: `langdaug train --pairs` writes
train.pairs, and the daemon routes each (source, target) pair to the first
model that serves it (a model with train.pairs serves exactly those pairs,
one without every pair of its domains from a dataset domain other than the
target).

Models are trained here for a few iterations on a `langdaug synth` set of
three domains: cam0:cam1 and cam1:cam0 per-pair models and a model of every
pair. Checked: each pulled sample carries the hash of the model of its
pair, an "any source" request draws only served sources, unserved pairs are
refused with ERROR_UNKNOWN_DOMAIN naming them, the hello reply, the status
reply and `langdaug status` (text and --json) list each model's pairs, a
reload swaps the routes (a session whose pair went away is told so) and a
failed one keeps them, and a hostile train.pairs is refused at load. Real
daemon on 127.0.0.1 ports; every wait is bounded and every daemon started
here is stopped here.
"""
import hashlib
import json
import os
import re
import unittest

from ldtest import (WAIT, SynthData, expect_error, pb, pull, recv_batch, run_cli, run_cli_ok, safetensors_meta,
                    write_with_meta)

TRAIN = ["--size", "32", "--widths", "4,8", "--batch", "2", "--langevin-steps", "2", "--threads", "1", "--iters", "2",
         "--checkpoint-every", "0", "--quiet"]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def pull_samples(d, n, seed=1, **kw):
    """n step-0 samples (n chains) of one request, as SampleMeta."""
    c = d.client()
    pull(c, credits=1, batch_size=n, steps=[0], seed=seed, **kw)
    b, _, _ = recv_batch(c)
    c.close()
    return list(b.samples)


def refusal(d, **kw):
    """The text of the ERROR_UNKNOWN_DOMAIN a request gets."""
    c = d.client()
    pull(c, credits=1, batch_size=2, **kw)
    text = expect_error(c, pb.ERROR_UNKNOWN_DOMAIN)
    c.close()
    return text


def pairs_of(model_info):
    return [(p.source, p.target) for p in model_info.pairs]


class PerPairModels(SynthData):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.ab = os.path.join(cls.tmp, "model.cam02cam1.safetensors")
        cls.ba = os.path.join(cls.tmp, "model.cam12cam0.safetensors")
        cls.every = os.path.join(cls.tmp, "every.safetensors")
        for pairs, out in (("cam0:cam1", cls.ab), ("cam1:cam0", cls.ba)):
            run_cli_ok("train", "--data", cls.data, *TRAIN, "--pairs", pairs, "--out", out)
        run_cli_ok("train", "--data", cls.data, *TRAIN, "--out", cls.every)
        cls.hash = {path: sha256(path) for path in (cls.ab, cls.ba, cls.every)}

    def start_with(self, *models, **kw):
        extra = [a for m in models[1:] for a in ("--model", m)]
        return self.start(model=models[0], extra=extra, **kw)

    def test_each_pair_goes_to_the_model_trained_for_it(self):
        self.assertEqual(safetensors_meta(self.ab)["train.pairs"], "cam0:cam1")
        self.assertEqual(safetensors_meta(self.every)["train.pairs"], "")
        d = self.start_with(self.ab, self.ba)
        for (src, tgt), model in ((("cam0", "cam1"), self.ab), (("cam1", "cam0"), self.ba)):
            got = pull_samples(d, 6, pairs=[pb.Pair(source=src, target=tgt)])
            self.assertEqual({(s.source_domain, s.target_domain, s.model_hash) for s in got},
                             {(src, tgt, self.hash[model])})
        # any source: only cam0 is served toward cam1
        got = pull_samples(d, 6, targets=["cam1"])
        self.assertEqual({(s.source_domain, s.model_hash) for s in got}, {("cam0", self.hash[self.ab])})
        # unserved pairs are refused, naming the pair
        self.assertIn("pair 'cam0:cam2' is served by no loaded model (cam2 is served from: none)",
                      refusal(d, pairs=[pb.Pair(source="cam0", target="cam2")]))
        self.assertIn("pair 'cam2:cam1' is served by no loaded model (cam1 is served from: cam0)",
                      refusal(d, pairs=[pb.Pair(source="cam2", target="cam1")]))
        self.assertIn("pair '*:cam2' is served by no loaded model", refusal(d, targets=["cam2"]))
        self.assertIn("pair '*:nowhere': no loaded model has the target domain 'nowhere'",
                      refusal(d, targets=["nowhere"]))
        self.assertIn("pair 'cam9:cam1': source domain 'cam9' is not in the dataset",
                      refusal(d, pairs=[pb.Pair(source="cam9", target="cam1")]))
        # a request with one unserved pair among served ones is refused whole
        self.assertIn("pair 'cam1:cam1'", refusal(d, pairs=[pb.Pair(source="cam0", target="cam1"),
                                                            pb.Pair(source="cam1", target="cam1")]))
        # hello, status and `langdaug status` list each model with its pairs
        want = [(self.hash[self.ab], [("cam0", "cam1")]), (self.hash[self.ba], [("cam1", "cam0")])]
        self.assertEqual([(m.hash, pairs_of(m)) for m in d.hello().models], want)
        st = d.status()
        self.assertEqual([(m.hash, pairs_of(m)) for m in st.models], want)
        self.assertEqual({(e.source, e.target) for e in st.energies}, {("cam0", "cam1"), ("cam1", "cam0")})
        r = run_cli("status", d.status_endpoint, timeout=WAIT)
        self.assertEqual(r.returncode, 0, r.stderr)
        for model, pair in ((self.ab, "cam0>cam1"), (self.ba, "cam1>cam0")):
            line = r"%s[^\n]*%s\n    pairs %s\n" % (self.hash[model][:12], re.escape(model), pair)
            self.assertRegex(r.stdout, line)
        self.assertIn("cam1>cam0", r.stdout.split("energies:")[1])
        r = run_cli("status", d.status_endpoint, "--json", timeout=WAIT)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([m["pairs"] for m in json.loads(r.stdout)["models"]],
                         [[{"source": "cam0", "target": "cam1"}], [{"source": "cam1", "target": "cam0"}]])
        self.assertIn("model %s (trained for the pairs of its train.pairs) serves 1 pair(s): cam0:cam1" % self.ab,
                      d.log_text())
        self.assertEqual(d.stop(), 0)

    def test_first_model_that_serves_a_pair_wins(self):
        """cam0:cam1 goes to the per-pair model; every other pair to the model
        of every pair; one request toward cam1 gets samples of both."""
        d = self.start_with(self.ab, self.every)
        served = {m.hash: pairs_of(m) for m in d.hello().models}
        self.assertEqual(served[self.hash[self.ab]], [("cam0", "cam1")])
        self.assertEqual(served[self.hash[self.every]], [("cam0", "cam2"), ("cam1", "cam0"), ("cam1", "cam2"),
                                                          ("cam2", "cam0"), ("cam2", "cam1")])
        got = pull_samples(d, 16, targets=["cam1"])
        by_source = {(s.source_domain, s.model_hash) for s in got}
        self.assertEqual(by_source, {("cam0", self.hash[self.ab]), ("cam2", self.hash[self.every])})
        # the same seed gives the same stream (a chain of the other model waits for the next job)
        again = pull_samples(d, 16, targets=["cam1"])
        self.assertEqual([(s.source_domain, s.source_file, s.crop_x, s.crop_y, s.model_hash) for s in got],
                         [(s.source_domain, s.source_file, s.crop_x, s.crop_y, s.model_hash) for s in again])
        # in the other order, the model of every pair serves cam0:cam1 too
        d2 = self.start_with(self.every, self.ab)
        self.assertEqual([len(m.pairs) for m in d2.hello().models], [6, 0])
        self.assertIn("model %s serves no pair" % self.ab, d2.log_text())
        self.assertEqual({s.model_hash for s in pull_samples(d2, 4, targets=["cam1"])}, {self.hash[self.every]})

    def test_reload_swaps_the_routes_and_a_failed_one_keeps_them(self):
        def models(*paths):
            return [("model", m) for m in paths]

        d = self.start(model=None, config=models(self.ab))
        back = [pb.Pair(source="cam1", target="cam0")]
        self.assertIn("pair 'cam1:cam0' is served by no loaded model", refusal(d, pairs=back))
        d.configure(models(self.ab, self.ba))
        st = d.reload("ok")
        self.assertEqual([pairs_of(m) for m in st.models], [[("cam0", "cam1")], [("cam1", "cam0")]])
        c = d.client()
        pull(c, credits=1, batch_size=2, pairs=back, steps=[0])
        b, _, _ = recv_batch(c)
        self.assertEqual({s.model_hash for s in b.samples}, {self.hash[self.ba]})
        # a model with a hostile train.pairs fails the reload: the routes stay
        hostile = os.path.join(self.tmp, "hostile-reload.safetensors")
        write_with_meta(self.ba, hostile, **{"train.pairs": "cam1:cam0,cam1:cam0"})
        d.configure(models(self.ab, hostile))
        st = d.reload("failed")
        self.assertIn("%s: metadata 'train.pairs': pair 'cam1:cam0' is listed twice" % hostile, st.last_reload)
        self.assertEqual([pairs_of(m) for m in st.models], [[("cam0", "cam1")], [("cam1", "cam0")]])
        pull(c, credits=1)
        b, _, _ = recv_batch(c)
        self.assertEqual({s.model_hash for s in b.samples}, {self.hash[self.ba]})
        # without the cam1:cam0 model, the session's request is no longer served and it is told which pair
        d.configure(models(self.ab))
        d.reload("ok")
        text = expect_error(c, pb.ERROR_UNKNOWN_DOMAIN)
        self.assertIn("after a reload, pair 'cam1:cam0' is served by no loaded model", text)
        c.close()
        self.assertEqual(d.stop(), 0)

    def test_hostile_train_pairs_is_refused_at_load(self):
        cases = (("cam0:nowhere", "pair 'cam0:nowhere': 'nowhere' is not one of the domains cam0,cam1,cam2"),
                 ("cam0-cam1", "pair 'cam0-cam1' is not source:target"),
                 ("cam0:cam1,", "pair '' is not source:target"),
                 ("cam2:cam2", "pair 'cam2:cam2': source and target are the same domain"))
        for k, (value, why) in enumerate(cases):
            bad = os.path.join(self.tmp, "hostile-%d.safetensors" % k)
            write_with_meta(self.ab, bad, **{"train.pairs": value})
            d = self.refused("with train.pairs = %r" % value, model=bad)
            self.assertEqual(d.proc.returncode, 1, d.log_text())
            self.assertIn("%s: metadata 'train.pairs': %s" % (bad, why), d.log_text())


if __name__ == "__main__":
    unittest.main()
