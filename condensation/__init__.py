"""The dataset-condensation library behind the entry scripts at the repository's top. Its floors, bottom up:
`common` (errors, the command runner, named random streams, atomic writes, the lock, the log) and `env` (the
environment PyTorch reads when it starts); `device` (torchrun, CUDA graphs, the memory footprint); the field's
building blocks `networks`, `augment` and `data`, and `evaluation` (training networks on a set); `methods` (the
arithmetic of DC/DSA, DM, DiM's GAN, IT-GAN's inversion, CL's memories); `run` (the flags, a run's files and
iteration bookkeeping, DiM's stages, CL's report); `repro` (the reproduction registry and its driver); and
`original_api`, the original DC repository's `utils` names that the top-level `utils.py` hands out. A module
imports only from its own floor or those below it.
"""
