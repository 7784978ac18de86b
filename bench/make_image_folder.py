"""Write classes of a prepared tensor file out as an image folder (PNG), for runs on `--dataset folder:PATH`.

    python bench/make_image_folder.py ../shared/data/CIFAR10.pt cifar5 --classes 0 1 2 3 4

writes cifar5/train/<class>/<index>.png and cifar5/test/<class>/<index>.png: every training and test image of the
chosen classes, losslessly, named by their index in the file (so the folder's sorted order is the file's order).
The folder is what a user of their own data would have: the runs then read it through the folder loader alone.
"""
import os
import sys

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from condensation.common import ArgumentParser, UserError, atomic_write_folder, run_cli


def write_folder(raw, out, classes):
    for split, key in (('train', 'train'), ('test', 'val')):
        images, labels = raw[f'images_{key}'], raw[f'labels_{key}']
        for c in classes:
            d = os.path.join(out, split, raw['classes'][c])
            os.makedirs(d, exist_ok=True)
            for i in tqdm((labels == c).nonzero()[:, 0].tolist(), desc=f'{split} {raw["classes"][c]}'):
                a = images[i].permute(1, 2, 0).numpy()
                Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(os.path.join(d, f'{i:05d}.png'))


def main():
    p = ArgumentParser(description=__doc__.split('\n')[0], domains={'classes': '>= 0'})
    p.add_argument('source', help='a prepared tensor file (classes, images_train, labels_train, images_val, ...)')
    p.add_argument('out', help='the folder to write')
    p.add_argument('--classes', type=int, nargs='+', default=[0, 1, 2, 3, 4], help='class indices to write')
    a = p.parse_args()
    if os.path.exists(a.out):
        raise UserError(f'{a.out} exists; choose a new folder')
    raw = torch.load(a.source, map_location='cpu', weights_only=True)
    bad = [c for c in a.classes if not c < len(raw['classes'])]
    if bad:
        raise UserError(f'--classes {bad[0]}: {a.source} has {len(raw["classes"])} classes (0 to '
                        f'{len(raw["classes"]) - 1})')
    atomic_write_folder(a.out, lambda folder: write_folder(raw, folder, a.classes))
    n = sum(len(files) for _, _, files in os.walk(a.out))
    print(f'{a.out}: {n} PNG files, classes {", ".join(raw["classes"][c] for c in a.classes)}; '
          f'mean of the chosen training images {np.round(_mean(raw, a.classes), 4).tolist()}')


def _mean(raw, classes):
    keep = torch.isin(raw['labels_train'], torch.tensor(classes))
    return raw['images_train'][keep].double().div(255).mean((0, 2, 3)).numpy()


if __name__ == '__main__':
    run_cli(main, resumable=False)
