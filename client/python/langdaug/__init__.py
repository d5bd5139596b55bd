"""langdaug: Python side of the langdaug sampler.

Submodules (imported on demand, nothing heavy here):
  langdaug.client  ZeroMQ client of langdaugd (needs pyzmq)
  langdaug.torch   the energy network in PyTorch and langdaug model files
"""

__version__ = "0.1.0"
