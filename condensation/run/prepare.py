"""Write the prepared tensor file of a dataset once, so that later loads skip torchvision and decoding:

    python -m condensation.run.prepare CIFAR10 --data_path data
    python -m condensation.run.prepare folder:flowers --im_size 32

(TinyImageNet: from the tiny-imagenet-200/ folder.) Prints the dataset and where its prepared file is.
"""
import os

from condensation.common import run_cli
from condensation.data import _prepared_candidates, canonical_dataset, folder_cache_path, get_dataset, user_spec
from condensation.run.cli import ArgumentParser, add_flags


if __name__ == '__main__':  # a command of its own (its positional argument declared here)
    def main(argv=None):
        p = ArgumentParser(description=__doc__.split('\n')[0])
        p.add_argument('dataset', help='a dataset name, or folder:PATH for an image folder')
        add_flags(p, ('data_path', 'im_size'), helps=dict(
            data_path='the folder holding the dataset (not used for folder:PATH)',
            im_size="folder: resize every image to this square size (default: the images' own size)"))
        a = p.parse_args(argv)
        d = get_dataset(a.dataset, a.data_path, im_size=a.im_size)
        kind, path = user_spec(canonical_dataset(a.dataset)) or (None, None)
        prepared = {'folder': lambda: folder_cache_path(path, a.im_size), 'file': lambda: path,
                    None: lambda: _prepared_candidates(d.name, a.data_path)[0]}[kind]()
        where = prepared if os.path.isfile(prepared) else f'not written ({os.path.dirname(prepared)} is read-only)'
        print(f'{d}; mean {d.mean}, std {d.std}; prepared file: {where}')

    run_cli(main, resumable=False)
