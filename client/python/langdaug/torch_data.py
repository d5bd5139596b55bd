"""LangDAugDataset: langdaugd samples as a torch.utils.data.IterableDataset.

Each DataLoader worker opens its own ``Client`` connection(s) inside ``__iter__`` (never
before the fork) and asks for its own random stream: the seed of worker w in iteration i of
resume generation g is a mix of (seed, g, i, w), so no two workers, iterations or resumed
runs share a stream, and a chain, identified by ``(meta["seed"], meta["chain_id"])``, is
never served twice. Progress is counted in a small shared-memory tensor that the workers
write (one slot each) and ``state_dict()`` reads from the main process.

Mixing with your own real-data loader (LangDAug trains the segmenter on the source images
plus the Langevin samples)::

    import torch
    from torch.utils.data import DataLoader
    from langdaug.torch import LangDAugDataset

    real = DataLoader(MyFundusDataset(...), batch_size=8, shuffle=True, drop_last=True)
    aug_ds = LangDAugDataset("tcp://sampler:5555", targets=["DomainB", "DomainC"],
                             steps=[10, 20, 40], seed=1234)
    aug = iter(DataLoader(aug_ds, batch_size=8, num_workers=2))
    for epoch in range(epochs):
        for x, y in real:                       # x in [-1, 1] like the samples, y long class ids
            xa, ya, meta = next(aug)            # the stream is endless unless num_samples is set
            logits = model(torch.cat([x, xa.to(x.dtype)]))
            loss = criterion(logits, torch.cat([y, ya]))
            ...
        torch.save({"model": model.state_dict(), "langdaug": aug_ds.state_dict()}, "ckpt.pt")

    # resuming: aug_ds.load_state_dict(torch.load("ckpt.pt")["langdaug"]) before iter(DataLoader(...))

Images come as float32 [C,S,S] in [-1, 1] whatever the wire encoding (uint8/float16 save
bandwidth), masks as int64 [S,S] class ids (what cross-entropy losses take), meta as a dict
(see langdaug.client; ``seed`` and ``chain_id`` are reinterpreted as int64 so that the default
collate can batch them: ``value & (2**64 - 1)`` gives the daemon's unsigned value).

Resuming does not replay samples: ``load_state_dict`` keeps the seed, moves to a new
generation of streams, and carries over the count of samples already yielded in the
interrupted iteration (so an iteration of ``num_samples`` ends at the same point). Samples
prefetched by the DataLoader but not yet used by the trainer count as yielded.
"""

import os

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .client import Client, _mix64

_MASK64 = (1 << 64) - 1
MAX_WORKERS = 1024
# slots of the shared state tensor
_BASE = 0             # samples already yielded in the interrupted iteration (applies to iteration 0)
_COUNTS = 1           # [MAX_WORKERS] samples yielded by each worker in its current iteration
_ITERS = 1 + MAX_WORKERS  # [MAX_WORKERS] iterations each worker started in this generation


def _int64(x):
    return x - (1 << 64) if x >= (1 << 63) else x


def worker_seed(seed, generation, iteration, worker):
    """The Client seed of one worker's stream (distinct for each argument tuple)."""
    key = ((generation & 0xFFFF) << 48) ^ ((iteration & 0xFFFFFF) << 24) ^ (worker & 0xFFFFFF) ^ 0x7472636864617461
    return _mix64((seed + _mix64(key & _MASK64)) & _MASK64)


class LangDAugDataset(IterableDataset):
    """Endless (or ``num_samples`` long) stream of (image, mask, meta) from langdaugd samplers.

    endpoints       data socket(s) of the sampler daemons ("tcp://host:5555", list or comma-separated); a name
                    of several addresses or a file:///path/hosts is a fleet (see langdaug.client)
    targets, pairs, steps, epoch, keep, credits, timeout, resolve_interval, resolver
                    as langdaug.Client (keep="luminance": samples differ from their source in colour only;
                    a resolver must be picklable, e.g. a module-level function, for DataLoader workers)
    dtype           wire encoding: "float32", "float16" or "uint8" (images are float32 either way)
    seed            base seed of all streams (None: a random one, recorded in state_dict())
    request_batch   samples per network message (a daemon batch), not the DataLoader's batch size
    num_samples     samples per iteration over all workers (None = endless)
    curve_server_key, curve_secret_key
                    CURVE keys as for langdaug.Client (Z85; see langdaug.client.read_key_file)
    """

    def __init__(self, endpoints, targets=(), pairs=(), steps=None, dtype="float32", seed=None, epoch=False,
                 credits=4, timeout=60.0, request_batch=16, num_samples=None, curve_server_key=None,
                 curve_secret_key=None, keep=None, resolve_interval=30.0, resolver=None):
        super().__init__()
        self.endpoints = endpoints
        self.client_args = dict(targets=targets, pairs=pairs, steps=steps, dtype=dtype, epoch=epoch,
                                credits=credits, timeout=timeout, curve_server_key=curve_server_key,
                                curve_secret_key=curve_secret_key, keep=keep, resolve_interval=resolve_interval,
                                resolver=resolver)
        self.request_batch = int(request_batch)
        self.num_samples = None if num_samples is None else int(num_samples)
        self.seed = int.from_bytes(os.urandom(8), "little") if seed is None else int(seed) & _MASK64
        self.generation = 0
        self._shared = torch.zeros(1 + 2 * MAX_WORKERS, dtype=torch.int64).share_memory_()
        if self.request_batch < 1:
            raise ValueError("request_batch must be >= 1")
        if self.num_samples is not None and self.num_samples < 0:
            raise ValueError("num_samples must be >= 0")

    def _share(self, worker, workers, iteration):
        """Samples this worker yields in this iteration (None = endless)."""
        if self.num_samples is None:
            return None
        remaining = self.num_samples - (int(self._shared[_BASE]) if iteration == 0 else 0)
        remaining = max(remaining, 0)
        return remaining // workers + (1 if worker < remaining % workers else 0)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers > MAX_WORKERS:
            raise ValueError("at most %d DataLoader workers" % MAX_WORKERS)
        iteration = int(self._shared[_ITERS + worker])
        self._shared[_ITERS + worker] += 1
        self._shared[_COUNTS + worker] = 0
        share = self._share(worker, workers, iteration)
        if share == 0:
            return
        client = Client(self.endpoints, self.request_batch, seed=worker_seed(self.seed, self.generation, iteration,
                                                                             worker),
                        name="langdaug-torch-%d" % worker, **self.client_args)
        try:
            done = 0
            for batch in client:
                images = torch.from_numpy(batch.images_float())
                masks = torch.from_numpy(batch.masks.astype(np.int64))
                for i, meta in enumerate(batch.meta):
                    meta["seed"], meta["chain_id"] = _int64(meta["seed"]), _int64(meta["chain_id"])
                    self._shared[_COUNTS + worker] += 1
                    yield images[i], masks[i], meta
                    done += 1
                    if share is not None and done >= share:
                        return
        finally:
            client.close()

    def state_dict(self):
        """What a resumed run needs: seed, generation, samples yielded in the current iteration."""
        iterations = int(self._shared[_ITERS:].max())
        samples = int(self._shared[_COUNTS:_ITERS].sum()) + (int(self._shared[_BASE]) if iterations <= 1 else 0)
        if self.num_samples is not None and samples >= self.num_samples:
            samples = 0  # the iteration is complete: a resumed run starts a full one
        return {"seed": self.seed, "generation": self.generation, "samples": samples, "iterations": iterations}

    def load_state_dict(self, state):
        """Continues from state_dict() output; call before the DataLoader starts its workers."""
        self.seed = int(state["seed"]) & _MASK64
        self.generation = int(state["generation"]) + 1
        self._shared.zero_()
        self._shared[_BASE] = int(state["samples"])
