"""The condensation methods, one module each: `dc` (gradient matching, DC and DSA), `dm` (distribution
matching), `gan` (the conditional GAN's losses and step that DiM and IT-GAN train), `dim` (DiM: its data,
augmentation and model pool, matching a generator's samples, and scoring them), `itgan` (IT-GAN's latent
inversion and condensation) and `continual` (class-incremental memories: selection, condensation and replay).
They hold the arithmetic and no command line: the entry scripts and `condensation.run` drive them.
"""
