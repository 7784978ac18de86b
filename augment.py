"""The field's augmentation names (`from augment import DiffAugment, ParamDiffAug, ...`): DSA, the DC
evaluation augmentation and DiM's DiffAug. The definitions live in condensation/augment.py.
"""
from condensation.augment import (DC_ROTATE_MODES, DC_TOKENS, DIM_SINGLE_TOKENS, DIM_TOKENS, DSA_TOKENS,  # noqa: F401
                                  DiMDiffAug, DiffAugment, ParamDiffAug, TOKEN_OPS, apply_dsa, augment_dc,
                                  get_daparam, make_dim_augs, parse_strategy, sample_dsa_params,
                                  select_params)
