import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import CL_DM
from condensation.methods import continual
from condensation.run import continual_report
from condensation import common
from conftest import CL_FAST, ROOT, cl_args, interrupt_at, over_seeds, toy_data, write_prepared

FAST = CL_FAST
DIM_OWN = ['--gan_mode_seeking', '0', '--gan_gp_every', '1']  # DiM's generator loss and penalty schedule


def _data(n=6, classes=10):
    """A 10-class MNIST-shaped Data with n training and 3 test images per class."""
    return toy_data(n, classes, n_test=3)


_args = cl_args


def _quiet(*a, **k):
    pass


def test_class_order_is_numpys_permutation_and_leaves_the_global_rng_alone():
    np.random.seed(123)
    before = np.random.get_state()
    orders = [continual.class_order(s, 100) for s in range(5)]
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(before[1:], after[1:])) and before[0] == after[0]
    for s, order in enumerate(orders):
        np.random.seed(s)
        assert order == np.random.permutation(100).tolist()
    assert orders[0] != orders[1] and sorted(orders[0]) == list(range(100))
    assert continual.step_classes(orders[0], 5, 1) == orders[0][20:40]
    assert continual.seen_classes(orders[0], 5, 1) == orders[0][:40]


def test_random_memories_follow_the_reference_numpy_stream():
    data = _data()
    order = continual.class_order(3, 10)
    mem = continual.random_memories(data, order, 5, 2, 3)
    np.random.seed(3)  # the reference: seed, class order, then get_images per new class in step order
    assert np.random.permutation(10).tolist() == order
    for step in range(5):
        for j, c in enumerate(continual.step_classes(order, 5, step)):
            idx = torch.from_numpy(np.random.permutation(data.indices_class[c].numpy())[:2])
            assert torch.equal(mem[step][0][2 * j:2 * j + 2], data.images(idx))
            assert mem[step][1][2 * j:2 * j + 2].tolist() == [c, c]


@pytest.mark.parametrize('method, extra', [('random', []), ('herding', []), ('kcenter', []), ('DM', []),
                                           ('DSA', ['--outer_loop', '1', '--inner_loop', '1']), ('DiM', []),
                                           ('DiM', ['--gan_cond', 'overwrite', '--gan_critic', 'ac', '--gan_ema', '0',
                                                    *DIM_OWN, '--dim_noise', '16']),
                                           ('DiM', ['--gan_cond', 'embed', '--dim_noise', '8'])])
def test_each_steps_memory_holds_only_its_classes_with_ipc_images_each(tmp_path, method, extra):
    data = _data()
    args = _args(tmp_path, '--method', method, *extra)
    order = continual.class_order(0, 10)
    mem = continual.Memories(args, data, 0, order, _quiet)
    for step in range(5):
        images, labels = mem.step(step)
        classes = continual.seen_classes(order, 5, step) if method == 'DiM' else continual.step_classes(order, 5, step)
        assert sorted(labels.tolist()) == sorted(c for c in classes for _ in range(2))
        assert images.shape == (len(labels), 1, 28, 28)
        if method in ('random', 'herding', 'kcenter'):  # coresets are real images of their own class
            for x, c in zip(images, labels.tolist()):
                assert any(torch.equal(x, r) for r in data.images(data.indices_class[c]))
    union, union_labels = mem.training_set(4)
    assert len(union) == 20 and set(union_labels.tolist()) == set(range(10))  # DiM: step 4's set of all 10
    if method == 'DiM':  # the budget of a generative memory is the generator
        assert ('label_embedding.weight' in mem.gan['generator']) == ('overwrite' not in extra)
        assert mem.budget(4) == (20, sum(v.numel() * v.element_size() for v in mem.gan['generator'].values()))
    else:
        assert mem.budget(4) == (20, 20 * 28 * 28)
    # The cache in the original's memory-file layout, reloaded instead of rebuilt.
    raw = torch.load(mem.path, weights_only=True)
    assert len(raw['data']) == 5 and raw['meta']['class_order'] == order
    again = continual.Memories(args, data, 0, order, _quiet)
    assert again.source == 'cache' and torch.equal(again.step(2)[0], mem.step(2)[0])


def test_herding_picks_the_greedy_running_mean_solution():
    f = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])  # mean 3.2
    # i=1: target 3.2 -> 3; i=2: 6.4-3=3.4 -> 2; i=3: 9.6-5=4.6 -> 1; i=4: 12.8-6=6.8 -> 10; then 0.
    # (Nearest-to-the-mean order would take 0 before 10.)
    assert continual.herding(f, 5).tolist() == [3, 2, 1, 4, 0]
    assert continual.herding(f, 2).tolist() == [3, 2]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g)
    picks = continual.herding(x, 10).tolist()
    chosen = []
    for i in range(10):  # brute force: the unselected row whose addition puts the running mean closest to μ
        rest = [j for j in range(40) if j not in chosen]
        chosen.append(min(rest, key=lambda j: float((x[chosen + [j]].mean(0) - x.mean(0)).norm())))
    assert picks == chosen


def test_kcenter_starts_nearest_the_mean_then_takes_farthest_points():
    f = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.5], [9.0, 0.0], [0.0, 7.0], [1.0, 1.0]])
    # mean (1.83, 1.92): nearest is (1, 1); then (9, 0) at 65, (0, 7) at 37, (0, 2.5) at 3.25, (0, 0) at 2, (1, 0)
    assert continual.kcenter(f, 6).tolist() == [5, 3, 4, 2, 0, 1]
    assert continual.kcenter(f, 3).tolist() == [5, 3, 4]
    dup = torch.zeros(4, 3)  # all equal: still distinct picks
    assert sorted(continual.kcenter(dup, 4).tolist()) == [0, 1, 2, 3]


def test_test_subset_holds_exactly_the_seen_classes():
    data = _data()
    order = continual.class_order(1, 10)
    for step in range(5):
        seen = continual.seen_classes(order, 5, step)
        x, y = continual.test_subset(data, seen)
        assert set(y.tolist()) == set(seen) and len(y) == 3 * len(seen)
        ref = torch.cat([data.x_test[data.labels_test == c] for c in sorted(seen)])
        assert torch.equal(torch.sort(x.flatten(1), 0).values, torch.sort(ref.flatten(1), 0).values)
        loader = continual.test_loader(data, seen)
        assert sum(len(b[1]) for b in loader) == len(y)


def _run(tmp, *extra):
    return CL_DM.main(['--dataset', 'MNIST', '--data_path', str(tmp), *FAST, '--seeds', '0', '1', *extra])


def test_end_to_end_outputs(tmp_path):
    write_prepared(str(tmp_path), 'MNIST', n_train=6, n_test=3, channel=1, size=28)
    out = tmp_path / 'out'
    s = _run(tmp_path, '--save_path', str(out), '--method', 'random')
    assert [r['classes'] for r in s['table']] == [2, 4, 6, 8, 10] and all(r['n'] == 2 for r in s['table'])
    assert s['latex'].count('& ') == 5 and s['class_orders']['1'] == continual.class_order(1, 10)
    assert [r['memory_images'] for r in s['table']] == [4, 8, 12, 16, 20]
    acc = np.asarray([s['accs'][k][4] for k in ('0', '1')]).ravel() * 100
    assert s['table'][4]['mean'] == pytest.approx(acc.mean()) and s['table'][4]['std'] == pytest.approx(acc.std())
    with open(out / 'cl_random_MNIST_ConvNetW32_2ipc_5steps.json') as f:
        assert json.load(f)['table'] == s['table']
    assert len((out / 'cl_random_MNIST_ConvNetW32_2ipc_5steps.csv').read_text().strip().splitlines()) == 6
    s2 = _run(tmp_path, '--save_path', str(out), '--method', 'kcenter', '--train_mode', 'finetune')
    assert s2['method'] == 'kcenter-finetune'
    curves = continual_report.collect_curves(str(out), 'MNIST', 'ConvNetW32', 2, 5)
    assert [c[0] for c in curves] == ['kcenter-finetune', 'random']  # one line per method in the plot
    from PIL import Image
    assert Image.open(out / 'cl_MNIST_ConvNetW32_2ipc_5steps.png').size == (760, 460)


@pytest.mark.parametrize('mode', ['scratch', 'finetune'])
def test_resume_skips_finished_steps_and_gives_the_same_results(tmp_path, monkeypatch, mode):
    write_prepared(str(tmp_path), 'MNIST', n_train=6, n_test=3, channel=1, size=28)
    full = _run(tmp_path, '--save_path', str(tmp_path / 'full'), '--method', 'herding', '--train_mode', mode)
    real, calls = CL_DM.evaluate_step, []

    def interrupted(args, data, images, labels, seen, seed, step, nets, log, on_epoch=None):
        calls.append((seed, step))
        if (seed, step) == (1, 2) and not args.resume:
            raise KeyboardInterrupt
        return real(args, data, images, labels, seen, seed, step, nets, log, on_epoch)
    monkeypatch.setattr(CL_DM, 'evaluate_step', interrupted)
    part = tmp_path / 'part'
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, '--save_path', str(part), '--method', 'herding', '--train_mode', mode)
    calls.clear()
    resumed = _run(tmp_path, '--save_path', str(part), '--method', 'herding', '--train_mode', mode, '--resume')
    assert calls == [(1, 2), (1, 3), (1, 4)]
    assert resumed['accs'] == full['accs'] and resumed['table'] == full['table']


def test_interrupted_synthesis_resumes_to_the_same_memory(tmp_path, monkeypatch):
    data = _data()
    order = continual.class_order(0, 10)
    args = _args(tmp_path, '--method', 'DM', '--Iteration', '5', '--checkpoint_every', '2')
    full = continual.condense_memory(args, data, order[:2], 0, 0, str(tmp_path / 'a.partial.pt'), _quiet)
    real = continual.DMStep
    monkeypatch.setattr(continual, 'DMStep', interrupt_at(real, 3))
    with pytest.raises(KeyboardInterrupt):
        continual.condense_memory(args, data, order[:2], 0, 0, str(tmp_path / 'b.partial.pt'), _quiet)
    assert torch.load(tmp_path / 'b.partial.pt', weights_only=True)['it'] == 2
    monkeypatch.setattr(continual, 'DMStep', real)
    resumed = continual.condense_memory(args, data, order[:2], 0, 0, str(tmp_path / 'b.partial.pt'), _quiet)
    assert torch.equal(full[0], resumed[0]) and torch.equal(full[1], resumed[1])
    assert not torch.equal(full[0][:2], data.images(data.indices_class[order[0]][:2]))


def test_released_memories_are_used_and_checked(tmp_path):
    write_prepared(str(tmp_path), 'MNIST', n_train=6, n_test=3, channel=1, size=28)
    data = _data()
    folder = tmp_path / 'metasets' / 'cl_data'
    folder.mkdir(parents=True)
    order = continual.class_order(0, 10)
    released = [[torch.randn(4, 1, 28, 28),
                 torch.tensor([c for c in continual.step_classes(order, 5, s) for _ in range(2)])]
                for s in range(5)]
    torch.save({'data': released}, folder / 'cl_DM_MNIST_ConvNetW32_2ipc_5steps_seed0.pt')
    args = _args(tmp_path, '--method', 'DM')
    mem = continual.Memories(args, data, 0, order, _quiet)
    assert mem.source == 'released' and torch.equal(mem.training_set(1)[0], torch.cat([released[0][0], released[1][0]]))
    torch.save({'data': released}, folder / 'cl_DM_MNIST_ConvNetW32_2ipc_5steps_seed1.pt')  # seed 1's order differs
    with pytest.raises(common.UserError, match='another class order'):
        continual.Memories(args, data, 1, continual.class_order(1, 10), _quiet)


def test_a_cache_built_with_other_settings_is_refused(tmp_path):
    data = _data()
    order = continual.class_order(0, 10)
    continual.Memories(_args(tmp_path, '--method', 'DM'), data, 0, order, _quiet).step(0)
    with pytest.raises(common.UserError, match='lr_img'):
        continual.Memories(_args(tmp_path, '--method', 'DM', '--lr_img', '3'), data, 0, order, _quiet)


def test_options_added_later_keep_older_caches_valid_at_their_old_values():
    """--gan_gp_every and --gan_mode_seeking came after DiM caches existed: at the values those caches were built
    with (1, 0) they are left out of the fingerprint, so a cache stays valid; any other value is recorded."""
    old = continual.builder_fingerprint(CL_DM.parse_args(['--method', 'DiM', '--gan_gp_every', '1',
                                                   '--gan_mode_seeking', '0']))
    assert 'gan_gp_every' not in old and 'gan_mode_seeking' not in old and old['gan_ema'] == 0.999
    new = continual.builder_fingerprint(CL_DM.parse_args(['--method', 'DiM', '--gan_gp_every', '4',
                                                   '--gan_mode_seeking', '1']))
    assert new == dict(old, gan_gp_every=4, gan_mode_seeking=1.0)


def test_a_rejected_rerun_keeps_the_earlier_log(tmp_path):
    write_prepared(str(tmp_path), 'MNIST', n_train=6, n_test=3, channel=1, size=28)
    out = tmp_path / 'out'
    argv = ['--save_path', str(out), '--method', 'DM', '--Iteration', '2', '--seeds', '0']
    _run(tmp_path, *argv)
    log = out / 'cl_DM_MNIST_ConvNetW32_2ipc_5steps.log'
    before = log.read_text()
    with pytest.raises(common.UserError, match='built with other settings'):
        _run(tmp_path, *argv, '--lr_img', '3')  # its memory cache is the first run's: refused
    assert log.read_text().startswith(before)


@pytest.mark.parametrize('extra, message', [
    (['--steps', '3'], 'does not divide the 10 classes'),
    (['--method', 'gdumb'], "unknown method 'gdumb'"),
    (['--ipc', '0'], '--ipc must be >= 1'),
    (['--ipc', '7'], 'exceeds the smallest class'),
    (['--seeds', '0', '0'], 'distinct'),
    (['--feature_net', 'nowhere.pt', '--method', 'herding'], 'no such file'),
    (['--dataset', 'ImageNet21k'], 'unknown dataset'),
    (['--train_mode', 'replay'], 'invalid choice'),
    (['--method', 'DSA', '--ipc', '3'], 'pass --outer_loop and --inner_loop'),
    (['--method', 'DiM', '--gan_cond', 'overwrite', '--dim_noise', '8'], 'must exceed the 10 classes'),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, message):
    write_prepared(str(tmp_path), 'MNIST', n_train=6, n_test=3, channel=1, size=28)
    argv = ['--dataset', 'MNIST', '--data_path', str(tmp_path), '--save_path', str(tmp_path / 'out'), *FAST, *extra]
    with pytest.raises(SystemExit) as e:
        common.run_cli(lambda: CL_DM.main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / 'out').exists()


def test_command_line_reports_errors_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'CL_DM.py'), '--dataset', 'CIFAR100', '--steps', '7'],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and 'does not divide' in r.stderr


@pytest.mark.parametrize('options', [['--gan_critic', 'ac', '--gan_ema', '0', *DIM_OWN], ['--gan_ema', '0.9', *DIM_OWN],
                                     ['--gan_ema', '0.9', '--gan_mode_seeking', '0.3']])
def test_generative_replay_keeps_the_old_classes_of_a_toy_set(tmp_path, options):
    """DiM's CL memory on 4 well-separated toy classes in 2 steps: after step 1, which trains the GAN on the new
    classes 2 and 3 while replaying its frozen step-0 copy for 0 and 1, the samples of the old classes are still
    labelled right by a classifier fitted on the real images (nearest class mean), where a generator that forgot
    them would draw the new classes for their labels. With DiM's own critic without averaging (--gan_critic ac
    --gan_ema 0, DiM's loss and penalty), with the projection critic and averaged generator, whose average
    continues across steps, and with the defaults' mode-seeking term and lazy penalty (weight 0.3 here: the toy's
    images of a class are nearly one image, and the full weight's push for spread blurs the bands toward their
    neighbours). A run's outcome depends on its seed and the CPU's rounding: over seeds and two CPU instruction
    sets most runs keep both old classes (94-100% right) and the others part of them (47-84% seen, more often with
    the mode-seeking term; none below 40% in 34 runs), so the claim is the median of 3 seeds: at least 40% right,
    chance being 25%."""
    data = toy_data(64, 4, n_test=2)
    args = _args(tmp_path, '--method', 'DiM', '--steps', '2', '--ipc', '16', '--gan_iters', '100',
                 '--gan_batch', '16', '--gan_lr', '4e-3', '--gan_width', '8', '--gan_cond', 'embed',
                 '--dim_noise', '32', *options)
    order = [0, 1, 2, 3]
    means = torch.stack([data.images(data.indices_class[c]).flatten(1).mean(0) for c in range(4)])

    def old_classes_kept(seed):
        _, gan = continual.dim_memory(args, data, order, 0, seed, None, _quiet)
        (images, labels), gan1 = continual.dim_memory(args, data, order, 1, seed, gan, _quiet)
        if 'ac' not in options:
            assert gan1['generator_ema']['steps'] == 200 and 'projection.weight' in gan1['discriminator']
        assert set(labels.tolist()) == {0, 1, 2, 3}
        guess = torch.cdist(images.flatten(1), means).argmin(1)
        old = labels < 2
        return (guess[old] == labels[old]).float().mean().item()

    ok, kept = over_seeds(old_classes_kept, lambda acc: acc >= 0.4, n=3, need=2)
    assert ok, kept


def _image_set(batch):
    """A batch (1 x b x C x H x W) as an order-free key: its images' pixel sums, sorted."""
    return batch.flatten(2).sum(2).sort(1)[0]


def test_fresh_replay_trains_on_new_draws_and_starts_each_network_alike(tmp_path, monkeypatch):
    """--dim_replay fresh (the default): the evaluation networks see a new draw from the step's generator after
    every epoch, in place of the stored memory (the evaluation loop reads the refilled buffer: a spy on its
    batches sees other images from epoch 1 on), each network starts on the stored memory, and a run is
    repeatable. --dim_replay stored trains on the memory alone. A cache without per-step generators is refused
    for fresh replay, with the flag that still works."""
    from condensation import evaluation
    write_prepared(str(tmp_path), 'MNIST', n_train=6, n_test=3, channel=1, size=28)
    seen = []
    real = evaluation._augment
    monkeypatch.setattr(evaluation, '_augment', lambda x, *a: seen.append(x.detach().clone()) or real(x, *a))
    argv = ['--method', 'DiM', '--seeds', '0', '--steps', '5', '--epoch_eval_train', '2', '--num_eval', '2']
    fresh = _run(tmp_path, *argv, '--save_path', str(tmp_path / 'fresh'))
    batches = list(seen)  # 2 networks x 3 epochs (0..2) x 1 batch, step by step
    assert len(batches) == 5 * 2 * 3
    for step in range(5):
        a0, a1, a2, b0, b1, b2 = map(_image_set, batches[6 * step:6 * step + 6])
        assert torch.equal(a0, b0)  # both networks start on the stored memory
        assert not torch.equal(a1, a0) and not torch.equal(a2, a1) and not torch.equal(b1, a1)
    seen.clear()
    again = _run(tmp_path, *argv, '--save_path', str(tmp_path / 'again'))
    assert fresh['accs'] == again['accs']
    seen.clear()
    _run(tmp_path, *argv, '--dim_replay', 'stored', '--save_path', str(tmp_path / 'stored'))
    assert len(seen) == 30 and all(torch.equal(_image_set(x), _image_set(seen[6 * (i // 6)]))
                                   for i, x in enumerate(seen))

    cache = next((tmp_path / 'stored' / 'cl_data').glob('cl_DiM_*.pt'))
    raw = torch.load(cache, weights_only=False)
    assert len(raw['samplers']) == 5
    del raw['samplers']
    torch.save(raw, cache)
    with pytest.raises(common.UserError, match='--dim_replay stored'):
        _run(tmp_path, *argv, '--save_path', str(tmp_path / 'stored'))


def test_a_gpu_made_gan_state_continues_on_the_cpu(tmp_path):
    """CL's generative memory continues the previous step's GAN state; one written on a GPU (capturable Adam) steps
    on the CPU, and the step's memory is what it is from the same state written on the CPU."""
    data = toy_data(8, 4, n_test=2)
    args = _args(tmp_path, '--method', 'DiM', '--steps', '2', '--ipc', '2', '--gan_iters', '3', '--gan_batch', '8',
                 '--gan_width', '8', '--gan_cond', 'embed', '--dim_noise', '16', *DIM_OWN)
    _, state = continual.dim_memory(args, data, [0, 1, 2, 3], 0, 0, None, _quiet)
    marked = copy.deepcopy(state)  # a load shares the state's tensors, which the steps then change
    for key in ('optim_g', 'optim_d'):
        marked[key] = dict(state[key], param_groups=[dict(g, capturable=True) for g in state[key]['param_groups']])
    (a, la), _ = continual.dim_memory(args, data, [0, 1, 2, 3], 1, 0, copy.deepcopy(state), _quiet)
    (b, lb), after_b = continual.dim_memory(args, data, [0, 1, 2, 3], 1, 0, marked, _quiet)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not after_b['optim_g']['param_groups'][0]['capturable']
