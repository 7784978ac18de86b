"""The one iteration bookkeeper (run/progress.py): with stdout redirected, progress lines at a time cadence that
state the rate and the time left (the first one the estimated total); the loss read back at its cadence and
checked for divergence; the checkpoint cadence; and a redirected DM run that writes such lines."""
import io
import re

import pytest

import main_DM
from conftest import dm_argv
from condensation.common import UserError
from condensation.run import progress as progress_mod
from condensation.run.progress import EVERY_S, FIRST_S, Progress, duration


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _run(total, seconds_per_it, start=0):
    """Iterate a Progress on a redirected stream, each iteration taking seconds_per_it on a fake clock."""
    clock, lines = FakeClock(), []
    progress = Progress(lines.append, total, start=start, desc='DM exp 0', clock=clock, stream=io.StringIO())
    for _ in progress:
        clock.now += seconds_per_it
    return lines


def test_a_redirected_loop_writes_lines_at_the_time_cadence_with_the_time_left():
    lines = _run(100, 3.0)  # 300 s in all
    # the first line once FIRST_S have passed, then one every EVERY_S
    first_at = int(-(-FIRST_S // 3))
    done = [int(re.match(r'DM exp 0: (\d+)/100 iterations', line).group(1)) for line in lines]
    assert done[0] == first_at
    assert all(b - a == EVERY_S / 3 for a, b in zip(done, done[1:]))
    assert len(lines) == 1 + int((300 - 3 * first_at) // EVERY_S)
    # the first states the estimated total, each a rate and the time left, exact at a constant speed
    assert lines[0] == (f'DM exp 0: {first_at}/100 iterations, 0.333 it/s, elapsed {duration(3 * first_at)}, '
                        f'estimated total {duration(300)} ({duration(300 - 3 * first_at)} left)')
    n = done[3]
    assert lines[3].endswith(f'elapsed {duration(3 * n)}, about {duration(300 - 3 * n)} left')


def test_the_first_iterations_one_off_work_is_left_out_of_the_rate():
    # the first iteration evaluates the initial set (25 s), the others take 3 s: the estimate follows the 3 s
    clock, lines = FakeClock(), []
    progress = Progress(lines.append, 100, desc='DM exp 0', clock=clock, stream=io.StringIO())
    for it in progress:
        clock.now += 25.0 if it == 0 else 3.0
    assert lines[0] == (f'DM exp 0: 2/100 iterations, 0.333 it/s, elapsed {duration(28)}, '
                        f'estimated total {duration(28 + 98 * 3)} ({duration(98 * 3)} left)')


def test_a_resumed_loop_estimates_from_its_own_iterations():
    lines = _run(100, 2.0, start=60)  # 40 iterations left at 2 s each
    assert lines[0].startswith(f'DM exp 0: {60 + int(-(-FIRST_S // 2))}/100 iterations, 0.5 it/s')
    assert lines[0].endswith(f'estimated total {duration(80)} ({duration(80 - 2 * int(-(-FIRST_S // 2)))} left)')


def test_a_terminal_gets_the_bar_and_no_lines():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    clock, lines = FakeClock(), []
    progress = Progress(lines.append, 50, clock=clock, stream=Terminal(), bar=False)
    for _ in progress:
        clock.now += 10
    assert lines == [] and not progress.lines


def test_the_loss_is_read_at_its_cadence_checked_and_the_checkpoints_are_due_at_theirs():
    progress = Progress(lambda m: None, 30, read_every=10, checkpoint_every=4, where='exp 0 iteration {it}',
                        advice='lower --lr_img (now 1)', diverged='the synthetic images diverged',
                        stream=io.StringIO())
    read = [it for it in range(30) if progress.read(it, 1.5, force=it == 7) is not None]
    assert read == [0, 7, 10, 20]
    assert progress.read(20, {'g': 1.0, 'd': 2.5}) == {'g': 1.0, 'd': 2.5}
    assert [it for it in range(12) if progress.checkpoint_due(it)] == [3, 7, 11]
    assert progress.read(3, float('nan')) is None  # not due: not read, not checked
    with pytest.raises(UserError, match=r'^exp 0 iteration 10: the loss is nan, the synthetic images diverged; '
                                        r'lower --lr_img \(now 1\)$'):
        progress.read(10, float('nan'))
    with pytest.raises(UserError, match='iteration 20: the d loss is inf'):
        progress.read(20, {'g': 1.0, 'd': float('inf')})


def test_a_redirected_dm_run_writes_progress_lines_to_its_log_and_stdout(prepared_mnist, monkeypatch, capsys):
    # a fake clock that advances 4 s per reading: the run's few iterations take "minutes"
    clock = FakeClock()

    def tick():
        clock.now += 4.0
        return clock.now
    monkeypatch.setattr(progress_mod, 'CLOCK', tick)
    main_DM.main(dm_argv(prepared_mnist, '--Iteration', '20'))  # stdout is captured: not a terminal
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if re.match(r'DM exp 0: \d+/21 iterations', line)]
    assert lines and 'estimated total' in lines[0] and all('left' in line for line in lines)
    log = (prepared_mnist / 'out' / 'DM_MNIST_ConvNetW32_1ipc.log').read_text()
    assert all(line in log for line in lines)


def test_an_evaluation_network_reports_its_epochs_at_the_time_cadence_in_a_terminal_too():
    """epoch_lines: the hook of evaluate_pool; the rate counts from the end of the first epoch, the first line
    states the estimated total, and no bar shows an evaluation, so the lines come whatever stdout is."""
    clock, lines = FakeClock(), []
    hook = progress_mod.epoch_lines(lines.append, 100, clock=clock)
    for i in range(2):  # two networks, each timed on its own
        for ep in range(101):
            clock.now += 0.5 if ep else 30.0  # a slow first epoch (recording, caches) is not in the rate
            hook('ConvNet', i, ep, None)
    first = int(FIRST_S / 0.5) + 1  # epochs done when the first line comes
    assert lines[0] == (f'  ConvNet #0: {first}/101 epochs, 2 epochs/s, elapsed {duration(FIRST_S)}, estimated '
                        f'total {duration(50)} ({duration(50 - FIRST_S)} left)')
    assert [line.split(':')[0] for line in lines] == ['  ConvNet #0'] * 2 + ['  ConvNet #1'] * 2


def test_a_loop_of_slow_units_counts_them_by_hand_and_says_seconds_per_unit():
    """CL's seeds x steps: begin(), advance() after each unit; a resumed run's done units are not in the rate."""
    clock, lines = FakeClock(), []
    progress = Progress(lines.append, 10, start=4, desc='CL DM', unit='steps', clock=clock, stream=io.StringIO())
    progress.begin()
    for _ in range(6):
        clock.now += 40.0
        progress.advance()
    progress.close()
    # the first line waits for a second unit: the first one's time may hold one-off work
    assert lines[0] == f'CL DM: 6/10 steps, 40 s per step, elapsed 1 min 20 s, estimated total {duration(240)} ' \
                       f'(2 min 40 s left)'
    assert lines[-1].startswith('CL DM: 10/10 steps') and lines[-1].endswith('about 0 s left')
