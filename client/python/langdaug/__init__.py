"""langdaug: Python side of the langdaug sampler.

    langdaug.Client              iterator of labelled batches from langdaugd samplers (pyzmq)
    langdaug.status(endpoint)    a sampler's StatusReply
    langdaug.torch.EBM           the energy network in PyTorch, saved as langdaug model files
    langdaug.torch.LangDAugDataset  a torch IterableDataset over samplers

Submodules load on first use, so `import langdaug` pulls in neither pyzmq nor torch.
"""

__version__ = "0.1.0"

_LAZY = {
    "Client": ("client", "Client"),
    "Batch": ("client", "Batch"),
    "status": ("client", "status"),
    "read_key_file": ("client", "read_key_file"),
    "LangDAugError": ("client", "LangDAugError"),
    "ProtocolError": ("client", "ProtocolError"),
    "RequestRejected": ("client", "RequestRejected"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module("." + module, __name__), attr)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
