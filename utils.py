"""The field's `utils`, as in the original DC repository: scripts written against it run here unchanged.

    from utils import get_loops, get_dataset, get_network, get_eval_pool, evaluate_synset, get_daparam, \
        match_loss, get_time, TensorDataset, epoch, DiffAugment, ParamDiffAug

Every name is imported from the library (condensation/original_api.py, which keeps the original signatures and
does the work with the library's own functions). The project's low-level helpers (errors, seeds, atomic writes,
the log) live in condensation/common.py.
"""
from condensation.original_api import (DiffAugment, ParamDiffAug, TensorDataset, epoch, evaluate_synset,  # noqa: F401
                                       get_daparam, get_dataset, get_eval_pool, get_loops, get_network, get_time,
                                       match_loss)

ORIGINAL_API = ('get_loops', 'get_dataset', 'get_network', 'get_eval_pool', 'evaluate_synset', 'get_daparam',
                'match_loss', 'get_time', 'TensorDataset', 'epoch', 'DiffAugment', 'ParamDiffAug')
