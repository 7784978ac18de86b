"""The Python API (condensation/api.py): the entry scripts' sets and accuracies from tensors, the callback, bad
input; and the installable package: `pip install` puts `condensation` and nothing else on the path, and README's
"From Python" example runs from outside the clone on that install."""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

import main
import main_DM
from conftest import ROOT, dm_argv, over_seeds, toy_images
import condensation as cd
from condensation.augment import get_daparam
from condensation.common import UserError

MNIST_STATS = dict(mean=[0.1307], std=[0.3081])  # the constants the scripts standardise MNIST with


def _prepared(tmp):
    raw = torch.load(tmp / 'MNIST.pt', weights_only=True)
    return raw['images_train'], raw['labels_train'], raw['images_val'], raw['labels_val']


def _script_run(script, tmp, *extra):
    script.main(dm_argv(tmp, *extra))
    name = f'{"DM" if script is main_DM else extra[-1]}_MNIST_ConvNetW32_1ipc'
    return torch.load(tmp / 'out' / f'res_{name}.pt', weights_only=True)


@pytest.mark.parametrize('method', ['DM', 'DC', 'DSA'])
def test_the_api_gives_the_scripts_set_and_accuracy_bit_for_bit(prepared_mnist, method):
    # Same images, normalisation, settings and seed: the script's set and recorded accuracy, exactly (on the CPU).
    tmp = prepared_mnist
    res = _script_run(main_DM, tmp) if method == 'DM' else _script_run(main, tmp, '--method', method)
    data = cd.dataset(*_prepared(tmp), name='MNIST', device='cpu', **MNIST_STATS)
    out = cd.condense(data, method, ipc=1, iterations=4, model='ConvNetW32', batch_real=4, seed=0, log=None)
    images, labels = res['data'][0]
    assert torch.equal(out.images, images) and torch.equal(out.labels, labels)
    assert out.iterations == 4 and out.method == method
    augment = {'DM': 'color_crop_cutout_flip_scale_rotate', 'DSA': 'color_crop_cutout_scale_rotate',
               'DC': dict(get_daparam('MNIST', 'ConvNetW32', 'ConvNetW32', 1), rotate_mode='spline')}[method]
    accs = cd.evaluate(data, out.images, out.labels, model='ConvNetW32', epochs=1, num_eval=1, augment=augment,
                       seed=0, streams=(0, 4), log=None)
    assert accs == res['accs_all_exps']['ConvNetW32']


def _toy(classes=4, n=12, **kw):
    x, y = toy_images(n, classes, 1, 28, seed=0)
    xt, yt = toy_images(5, classes, 1, 28, seed=1)
    return x, y, xt, yt


def test_a_callback_sees_the_losses_and_stops_the_run_where_it_says():
    data = cd.dataset(*_toy(), device='cpu')
    seen = []

    def stop_at_5(it, loss):
        seen.append((it, loss))
        return it == 5

    kw = dict(ipc=2, model='ConvNetW32', batch_real=4, seed=3, log=None)
    stopped = cd.condense(data, 'DM', iterations=20, callback=stop_at_5, **kw)
    assert [it for it, _ in seen] == list(range(6)) and stopped.iterations == 6 and stopped.losses == seen
    # every iteration draws from its own streams: stopping after 6 is running 6
    assert torch.equal(stopped.images, cd.condense(data, 'DM', iterations=6, **kw).images)
    every = cd.condense(data, 'DM', iterations=7, callback=lambda it, loss: None, every=3, **kw)
    assert [it for it, _ in every.losses] == [0, 3, 6]


def test_images_as_uint8_or_float_in_0_1_give_the_same_set_and_are_never_written_to():
    x, y, xt, yt = _toy()
    xf = x.float().div(255)
    before = xf.clone()
    sets = [cd.condense(cd.dataset(images, y, xt, yt, mean=0.3, std=0.25, device='cpu'), 'DM', ipc=2, iterations=3,
                        model='ConvNetW32', batch_real=4, log=None).images for images in (x, xf)]
    assert torch.equal(*sets)
    assert torch.equal(xf, before)
    # computed stats: float images are taken as they are, uint8 ones scaled to [0, 1]
    d8, df = cd.dataset(x, y, device='cpu'), cd.dataset(xf, y, device='cpu')
    assert d8.mean == pytest.approx(df.mean) and d8.std == pytest.approx(df.std)
    assert df.mean[0] == pytest.approx(float(xf.mean()))


def test_neither_condense_nor_evaluate_touches_the_global_random_generator():
    data = cd.dataset(*_toy(), device='cpu')
    state = torch.get_rng_state()
    out = cd.condense(data, 'DSA', ipc=1, iterations=2, model='ConvNetW32', batch_real=4, log=None)
    cd.evaluate(data, out.images, out.labels, model='ConvNetW32', epochs=2, num_eval=2, log=None)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_condensed_set_learns_the_toy_classes_over_seeds():
    # Evaluated under the protocol, a DM set of a toy whose classes are visible beats chance (25 %) by far.
    x, y, xt, yt = _toy()
    data = cd.dataset(x, y, xt, yt, device='cpu')

    def accuracy(seed):
        out = cd.condense(data, 'DM', ipc=1, iterations=5, model='ConvNetW32', batch_real=8, seed=seed, log=None)
        return cd.evaluate(data, out.images, out.labels, model='ConvNetW32', epochs=30, num_eval=1, seed=seed,
                           augment='none', log=None)[0]
    holds, accs = over_seeds(accuracy, lambda acc: acc > 0.6)
    assert holds, accs


BAD = [
    (lambda x, y, xt, yt: cd.dataset(x[0], y), '4-d N x C x H x W'),
    (lambda x, y, xt, yt: cd.dataset(x, y[:-1]), 'same number of rows'),
    (lambda x, y, xt, yt: cd.dataset(x, y, classes=['a', 'b']), r'labels must lie in 0\.\.1'),
    (lambda x, y, xt, yt: cd.dataset(x, y.clamp(max=2), classes=list('abcd')), r'class\(es\) \[3\] have no training'),
    (lambda x, y, xt, yt: cd.dataset(x, y, mean=0.5), 'pass both mean and std'),
    (lambda x, y, xt, yt: cd.dataset(x, y, mean=[0.5, 0.5], std=1), 'one finite number or 1'),
    (lambda x, y, xt, yt: cd.dataset(x, y, xt[:, :, :20], yt), 'test_images must be'),
    (lambda x, y, xt, yt: cd.condense(cd.dataset(x, y), 'KIP'), "unknown method 'KIP'"),
    (lambda x, y, xt, yt: cd.condense(cd.dataset(x, y), 'DC', dsa_strategy='flip'), "use method='DSA'"),
    (lambda x, y, xt, yt: cd.condense(cd.dataset(x, y), 'DSA', dsa_strategy='none'), 'needs a DSA strategy'),
    (lambda x, y, xt, yt: cd.condense(cd.dataset(x, y), 'DM', ipc=13), 'exceeds the smallest class'),
    (lambda x, y, xt, yt: cd.condense(cd.dataset(x, y), 'DM', model='ConvNt'), "unknown model 'ConvNt'"),
    (lambda x, y, xt, yt: cd.condense(cd.dataset(x, y), 'DM', iterations=2.5), 'iterations must be an integer'),
    (lambda x, y, xt, yt: cd.condense(cd.dataset(x, y), 'DM', dsa_strategy='spin'), 'unknown augmentation token'),
    (lambda x, y, xt, yt: cd.evaluate(cd.dataset(x, y), x.float(), y), 'no test split'),
    (lambda x, y, xt, yt: cd.evaluate(cd.dataset(x, y, xt, yt), x, y), 'must be float'),
]


@pytest.mark.parametrize('call, message', BAD)
def test_bad_input_is_one_line_that_says_what_to_do(call, message):
    with pytest.raises(UserError, match=message) as e:
        call(*_toy())
    assert '\n' not in str(e.value)


def test_a_diverging_run_stops_with_a_user_error():
    data = cd.dataset(*_toy(), device='cpu')
    with pytest.raises(UserError, match='lower --lr_img'):
        cd.condense(data, 'DM', ipc=1, iterations=30, model='ConvNetW32', batch_real=4, lr_img=1e30, log=None)


def test_importing_the_package_starts_no_torch():
    # The entry scripts import condensation.env before PyTorch starts: the package's own import loads nothing.
    code = 'import sys, condensation; assert "torch" not in sys.modules; print(condensation.condense.__module__)'
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == 'condensation.api', out.stderr


def test_the_package_depends_on_what_requirements_txt_lists():
    tomllib = pytest.importorskip('tomllib')  # Python 3.11 and later
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        project = tomllib.load(f)['project']
    with open(os.path.join(ROOT, 'requirements.txt')) as f:
        required = [line.strip() for line in f if line.strip() and not line.startswith('#')]
    assert project['dependencies'] == required


# ---------------------------------------------------------------------------------------------- the installation

def readme_example():
    """The first python block of README's "From Python" section."""
    with open(os.path.join(ROOT, 'README.md')) as f:
        section = f.read().split('\n## From Python\n', 1)[1].split('\n## ', 1)[0]
    return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def _copy_clone(dst):
    """What a clone holds for installing: the package, the top-level modules and scripts, pyproject and README
    (built in a copy, so the build's folders stay out of the worktree)."""
    os.makedirs(dst)
    for name in os.listdir(ROOT):
        if name.endswith('.py') or name in ('pyproject.toml', 'README.md', 'requirements.txt'):
            shutil.copy(os.path.join(ROOT, name), dst)
    shutil.copytree(os.path.join(ROOT, 'condensation'), os.path.join(dst, 'condensation'),
                    ignore=shutil.ignore_patterns('__pycache__'))
    return sorted(name[:-3] for name in os.listdir(dst) if name.endswith('.py'))


def _pip(*args):
    """pip of this interpreter, offline: the build backend (setuptools, requirements-dev.txt) and torch come from
    the environment the tests run in."""
    out = subprocess.run([sys.executable, '-m', 'pip', '--disable-pip-version-check', *args, '--no-deps',
                          '--no-build-isolation', '--no-index', '--quiet'], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


WHERE = '''
import importlib.util, json, sys
print(json.dumps({n: getattr(importlib.util.find_spec(n), 'origin', None) for n in sys.argv[1:]}))
'''


def test_pip_install_gives_the_package_alone_and_the_readme_example_runs_outside_the_clone(tmp_path):
    src = tmp_path / 'clone'
    top = _copy_clone(src)
    assert {'utils', 'networks', 'augment', 'main', 'main_DM', 'evaluate'} <= set(top)
    # A plain install: one package in site-packages, the entry scripts and the field's modules stay behind.
    _pip('install', '--target', str(tmp_path / 'target'), str(src))
    assert sorted(os.listdir(tmp_path / 'target')) == ['condensation', 'condensation-0.1.0.dist-info']
    # An editable install into a fresh virtual environment that sees this one's packages (torch) through a .pth.
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', '--system-site-packages', str(venv)], check=True)
    python = str(venv / 'bin' / 'python')
    site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, 'outer.pth'), 'w') as f:
        f.write('\n'.join(sorted({sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']})) + '\n')
    _pip('--python', python, 'install', '-e', str(src))
    elsewhere = tmp_path / 'notebook'
    elsewhere.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH='')
    where = subprocess.run([python, '-c', WHERE, 'condensation', *top], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=120)
    found = json.loads(where.stdout)
    assert found.pop('condensation') == str(src / 'condensation' / '__init__.py')
    leaked = {n: o for n, o in found.items() if o is not None and str(tmp_path) in o}
    assert not leaked, leaked
    (elsewhere / 'example.py').write_text(readme_example())
    run = subprocess.run([python, 'example.py'], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert 'iteration 0: loss' in lines[0] and 'iteration 10: loss' in run.stdout
    assert 'torch.Size([20, 1, 28, 28]) [0, 0, 1, 1, 2, 2' in run.stdout
    assert re.search(r'test accuracy \d+\.\d %', lines[-1]), lines[-1]
