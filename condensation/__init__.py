"""The dataset-condensation library behind the entry scripts at the repository's top. Its floors, bottom up:
`common` (errors, the command runner, named random streams, atomic writes, the lock, the log) and `env` (the
environment PyTorch reads when it starts); `device` (torchrun, CUDA graphs, the memory footprint); the field's
building blocks `networks`, `augment` and `data`, and `evaluation` (training networks on a set); `methods` (the
arithmetic of DC/DSA, DM, DiM's GAN, IT-GAN's inversion, CL's memories); `run` (the flags, a run's files and
iteration bookkeeping, DiM's stages, CL's report); `repro` (the reproduction registry and its driver);
`original_api`, the original DC repository's `utils` names that the top-level `utils.py` hands out; and `api`, the
Python API (`condensation.dataset`, `condense`, `evaluate`). A module imports only from its own floor or those
below it.

`import condensation` itself imports nothing (the entry scripts import `condensation.env` before PyTorch starts);
the API's names are loaded from `condensation.api` on first use.
"""
API = ('dataset', 'condense', 'evaluate', 'Condensed', 'UserError', 'FULL_DSA')


def __getattr__(name):
    if name in API:
        from condensation import api
        return getattr(api, name)
    raise AttributeError(f"module 'condensation' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(API))
