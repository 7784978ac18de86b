"""One loop's iteration bookkeeping, the same for every loop (DC/DSA and DM, DiM's stages, CL's memories, IT-GAN):
progress, the loss read back at a cadence with the divergence check, and the checkpoint cadence.

Progress shows where a run is wherever its output goes. In a terminal it is a tqdm bar (unless --no_progress);
when stdout is not a terminal (`nohup`, a scheduler, `> log`) the bar would fill the file with carriage returns,
so instead a line goes to the log and to stdout at a time cadence: iteration, rate, elapsed time and the time
left. The first such line comes after FIRST_S seconds and states the estimated total time; then one every
EVERY_S seconds. The rate is measured from the end of the first iteration, which carries one-off work (an
evaluation of the initial set, lazy set-up) that would otherwise inflate every estimate.

The loss is read back to the host (which makes it wait for the device) only every `read_every` iterations and
when a checkpoint or the end follows; a loss that is not finite stops the run there, before a diverged state
reaches a checkpoint.
"""
import sys
import time

from tqdm import tqdm

from condensation.common import check_losses
from condensation.device import parallel

FIRST_S = 10.0  # seconds before the first progress line of a redirected run (the estimate of the total)
EVERY_S = 30.0  # seconds between the progress lines that follow
CLOCK = time.monotonic  # what the lines measure time with (a test replaces it)


def duration(seconds):
    """'42 s', '3 min 05 s', '2 h 07 min'; '' for None."""
    if seconds is None:
        return ''
    seconds = int(round(seconds))
    if seconds < 60:
        return f'{seconds} s'
    if seconds < 3600:
        return f'{seconds // 60} min {seconds % 60:02d} s'
    return f'{seconds // 3600} h {seconds % 3600 // 60:02d} min'


class Progress:
    """The iterations start..total-1 of one loop, iterated as `for it in progress`, with

        parts = progress.read(it, losses, force)   # {name: float} every read_every iterations (and when forced),
                                                   # checked for divergence; None in between
        if progress.checkpoint_due(it): ...        # every checkpoint_every iterations

    A loop that is not a plain `for` (CL's seeds x steps) calls begin() before its first unit, advance() after each
    and close() at the end.

    log: the run's log (a line goes to its file and to stdout); desc: what the loop is (the bar's label and the
    progress lines'); unit: what it counts; lines: the time-cadence lines on (True) or off (False) whatever stdout
    is (default: when stdout is not a terminal); where ('{it}' is the iteration), advice and diverged: the
    divergence message's place, remedy and diagnosis; check(where, advice): a further test of the learned state at
    every read (a set's values within the data's range), raising UserError; shown: the loss names the bar shows
    (default: all); clock and stream: for tests (a fake clock, a redirected stdout)."""

    def __init__(self, log, total, *, start=0, desc='', unit='iterations', bar=True, read_every=10,
                 checkpoint_every=None, where='', advice='', diverged='the training diverged', check=None, shown=None,
                 leave=True, lines=None, clock=None, stream=None):
        self.log, self.total, self.start, self.desc, self.diverged = log, total, start, desc, diverged
        self.check, self.unit = check, unit
        self.read_every, self.checkpoint_every = read_every, checkpoint_every
        self.where, self.advice, self.shown, self.clock = where, advice, shown, clock or CLOCK
        stream = sys.stdout if stream is None else stream
        # time-cadence lines instead of a bar
        self.lines = (not stream.isatty() if lines is None else lines) and parallel.is_main()
        self.bar = tqdm(range(start, total), desc=desc, initial=start, total=total, leave=leave, dynamic_ncols=True,
                        disable=not bar or self.lines)
        self._t0 = self._last = None
        self._next = FIRST_S

    def __iter__(self):
        self.begin()
        try:
            for it in self.bar:
                yield it
                self.tick(it + 1)
        finally:
            self.close()

    def begin(self):
        self._t0 = self.clock()
        self._done = self.start
        self._first = None  # (elapsed, done) at the end of the first iteration: the rate counts from there

    def advance(self):
        """One unit done (a loop that is not a plain `for`): the bar and, when due, a line."""
        self._done += 1
        self.bar.update(1)
        self.tick(self._done)

    def close(self):
        self.bar.close()

    def tick(self, done):
        """After `done` iterations: a progress line when the cadence says so (redirected output only)."""
        if not self.lines:
            return
        elapsed = self.clock() - self._t0
        if self._first is None and done > self.start:
            self._first = elapsed, done
        if elapsed < self._next or done <= self.start:
            return
        since, first_done = self._first
        if done == first_done and done < self.total:
            return  # only the first iteration has run: no rate without its one-off work yet
        rate = (done - first_done) / (elapsed - since) if done > first_done and elapsed > since \
            else (done - self.start) / elapsed
        left = (self.total - done) / rate
        first = self._last is None
        self._last, self._next = elapsed, elapsed + EVERY_S
        speed = f'{rate:.3g} it/s' if self.unit == 'iterations' else \
            f'{rate:.3g} {self.unit}/s' if rate >= 1 else f'{1 / rate:.3g} s per {self.unit.rstrip("s")}'
        self.log(f'{self.desc}: {done}/{self.total} {self.unit}, {speed}, elapsed {duration(elapsed)}, '
                 + (f'estimated total {duration(elapsed + left)} ({duration(left)} left)' if first
                    else f'about {duration(left)} left'))

    def read_due(self, it, force=False):
        return force or it % self.read_every == 0

    def read(self, it, losses, force=False):
        """The losses ({name: tensor or float}, or one loss) as floats when due (read_due), checked; else None."""
        if not self.read_due(it, force):
            return None
        parts = {k: float(v) for k, v in losses.items()} if isinstance(losses, dict) else {'': float(losses)}
        check_losses(parts, self.where.format(it=it), self.advice, self.diverged)
        if self.check is not None:
            self.check(self.where.format(it=it), f'{self.diverged}; {self.advice}')
        shown = {k: v for k, v in parts.items() if self.shown is None or k in self.shown}
        self.bar.set_postfix({k or 'loss': f'{v:.4f}' for k, v in shown.items()})
        return parts if isinstance(losses, dict) else parts['']

    def checkpoint_due(self, it):
        return self.checkpoint_every is not None and (it + 1) % self.checkpoint_every == 0


def epoch_lines(log, epochs, clock=None):
    """An on_epoch hook for evaluation.evaluate_pool (epochs: the networks' epoch_eval_train): while a network
    trains (a 1000-epoch network takes minutes on a CPU), lines at the time cadence above with its rate and time
    left, the first with the estimated total, whether stdout is a terminal or not (no bar shows an evaluation).
    The rate is measured from the end of the first epoch (which records the graphs and warms the caches)."""
    current = {}

    def hook(arch, i, ep, net):
        if ep == 0:
            current[arch, i] = Progress(log, epochs + 1, start=1, desc=f'  {arch} #{i}', unit='epochs', bar=False,
                                        lines=True, clock=clock)
            current[arch, i].begin()
        elif (arch, i) in current:
            current[arch, i].tick(ep + 1)
    return hook
