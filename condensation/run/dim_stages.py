"""A DiM stage's run (gen_condense.py, pool_match.py, validate.py): where it starts (the data, the GAN), its folder
and log, its GAN checkpoints, the best checkpoints chosen by validation, previews and what it reports about itself.
The stage loops are the scripts'; the method is dim.py, the GAN and its checkpoint format gan.py, the flags cli.py.

Evaluation protocol. By default checkpoints are selected on a class-balanced validation split held out from the
training set (--val_split per class), BN networks are tested in eval mode, and the final accuracy is the number.
--compat reference restores the reference: selection and report on the test set (best over test points),
train-mode testing, MNIST/FashionMNIST test images normalised with 0.5/0.5 (docs/design.md, D-B1, D-B2, D-B5).

Randomness: every draw comes from a torch.Generator named by (--seed, stage, epoch, ...), never the global RNG,
so a resumed run repeats an uninterrupted one.
"""
import os
import shutil
import sys

import numpy as np
import torch

from condensation.run import cli
from condensation import data as data_mod
from condensation.methods import gan
from condensation.device import parallel
from condensation.run import runner
from condensation.run.progress import Progress
from condensation import common
from condensation.augment import DIM_TOKENS, parse_strategy
from condensation.methods.dim import MATCH_COEFF, POOL, ClassScore, DiMData, check_model_name, default_pool, \
    epoch_batches
from condensation.networks import resolve_stem
from condensation.common import UserError, check_output_folder, make_generator

# Arguments that a resumed run of stage 1 or 2 may change (the rest must be as in its last.pth).
RESUMABLE = ('resume', 'device', 'no_progress', 'epochs', 'print_freq', 'num_workers', 'data_dir', 'output_dir',
             'logs_dir', 'notes', 'cas', 'cuda_graphs', 'precision')

# ----------------------------------------------------------------------------------------------------------------
# A stage's flags (declared in cli.FLAGS; checked here, where DiM's tables are known)

def check_dim_args(args, stage, notes=()):
    """Validate the flags (UserError: one line) and derive everything the run needs from them: dataset name,
    device, protocol, ResNet stem, stage defaults, validate.py's batch size under --auto_bs, and `notes`, the
    warnings the run's log opens with (beginning with `notes`). Nothing writes to args after this. (The numbers'
    domains were checked by the parser, cli.DOMAINS.)"""
    notes = [n.removeprefix('warning: ') for n in notes]
    ignored = cli.IGNORED + (cli.STAGE3_IGNORED if stage == 3 else ())
    args.stage = stage
    args.dataset = data_mod.canonical_dataset(args.data)
    info = data_mod.dataset_info(args.dataset, args.data_dir, args.im_size)
    im_size, num_classes = info.im_size, info.num_classes
    check_output_folder(args.output_dir, '--output-dir')
    check_output_folder(args.logs_dir, '--logs-dir')
    cli.check_folder_name(args.tag, '--tag')
    if not sys.stderr.isatty() or not parallel.is_main():
        args.no_progress = True  # carriage-return bar updates would fill a redirected log; one bar under torchrun
    args.device = cli.resolve_device(args.device)
    common.set_precision(args.precision, args.device)
    try:
        parse_strategy(args.aug_type, valid=DIM_TOKENS)
    except ValueError as e:
        raise UserError(f'--aug-type: {e}') from None
    for name in args.eval_model:
        check_model_name(name)
    args.protocol = 'reference' if args.compat == 'reference' else 'sound'
    args.stem = resolve_stem(args.resnet_stem, args.dataset)
    for flag in ignored:
        if getattr(args, flag, None) is not None:
            notes.append(f'--{flag.replace("_", "-")} is ignored by {cli.SCRIPTS[stage]}.py')
    if stage == 2:
        if args.match_coeff is None:
            args.match_coeff = MATCH_COEFF[args.match]
        if args.compat == 'clean':
            args.match_norm, args.match_joint_bn = 'consistent', True
        if not args.pool and default_pool(args.stem, im_size[0]) != POOL:
            notes.append(f'pool without the _ap ResNets on {info.name} (their ImageNet stem collapses '
                         f'{im_size[0]}x{im_size[1]} inputs); --resnet_stem cifar keeps the full pool')
    if stage == 3:
        if args.dsa_strategy is not None:
            try:
                parse_strategy(args.dsa_strategy)
            except ValueError as e:
                raise UserError(f'--dsa_strategy: {e}') from None
        args.batch_size = _stage3_batch_size(args, num_classes, notes)
    args.notes = tuple(notes)  # recorded in config.json and checkpoints, logged as warnings by StageRun
    return args


def _stage3_batch_size(args, num_classes, notes):
    """validate.py trains n_it = ⌊K·ipc/bs⌋ steps per epoch: bs > K·ipc would train nothing (docs/design.md,
    D-B3). The batch size to use: --batch-size, or K·ipc with --auto_bs; UserError otherwise."""
    budget = num_classes * args.ipc
    if args.batch_size <= budget:
        return args.batch_size
    if not args.auto_bs:
        raise UserError(f'--batch-size {args.batch_size} exceeds K*ipc = {budget}, so an epoch would train 0 '
                        f'steps; pass --batch-size {budget} or less, or --auto_bs')
    notes.append(f'--auto_bs: batch size {args.batch_size} -> {budget} (K*ipc)')
    return budget


def parse_dim_args(stage, description, argv=None):
    """Stage `stage`'s validated arguments (cli.Config) from argv (default: the command line)."""
    helps = dict(pool=f'pool architectures (default: {" ".join(POOL)}; without _ap on 28x28 data with the ImageNet '
                      f'stem, where they collapse)')
    parser = cli.dim_parser(stage, description, helps)
    args = parser.parse_args(argv)
    return cli.Config(check_dim_args(args, stage, cli.unused_flags(parser, args, 'dim')))


# ----------------------------------------------------------------------------------------------------------------
# What a stage starts from

def load_data(args, val_split=True):
    """The dataset as the DiM stages see it (dim.DiMData); val_split False: no validation split (stage 3)."""
    real = data_mod.get_dataset(args.dataset, args.data_dir, device=args.device, im_size=args.im_size)
    if args.num_classes is not None and args.num_classes != real.num_classes:
        raise UserError(f'--num-classes {args.num_classes} does not match {real.name} ({real.num_classes} classes); '
                        f'drop the flag')
    return DiMData(real, args, val_split)


def gan_networks(args, data):
    """(G, D) shaped by the run's GAN flags, initialised from the stream (seed, 'gan_init')."""
    return gan.build_gan(data, args.dim_noise, args.cond, args.gan_width, args.device,
                         make_generator(args.seed, 'gan_init'), critic=args.critic)


def new_gan(args, data):
    """(G, D, opt_g, opt_d), freshly initialised (gan_networks); under torchrun the optimisers average their
    gradients over the processes first (data parallelism over the GAN batch)."""
    G, D = gan_networks(args, data)
    opt_g, opt_d = gan.adam(G, args.lr), gan.adam(D, args.lr)
    for opt in (opt_g, opt_d):
        parallel.average_gradients(opt)
    return G, D, opt_g, opt_d


def load_sampler(path, args, data, flag='--pretrain-weight'):
    """G from a checkpoint's sampling weights (gan.sampling_weights), in eval mode; and the checkpoint."""
    ck = gan.read_checkpoint(path, flag)
    gan.check_foreign(ck, args, flag, path)
    G, _ = gan_networks(args, data)
    state, name = gan.sampling_weights(ck)
    gan.load_into(G, state, flag, path, name)
    return G.eval(), ck


def config(args):
    """The arguments as a JSON-friendly dict (stored in checkpoints, config.json and results)."""
    return runner.fingerprint(args)


def protocol_label(args):
    """Every DiM result states the protocol that produced it."""
    if args.stage == 3:
        if args.protocol == 'reference':
            return ('reference protocol (--compat reference): BN networks tested in train mode, 1-channel test images '
                    'normalised 0.5/0.5; final accuracy, and the best over test points (the reference\'s number)')
        return 'sound protocol: networks tested in eval mode, final accuracy reported'
    if args.protocol == 'reference':
        return ('reference protocol (--compat reference): checkpoints selected on the test set (best of test points), '
                'BN networks tested in train mode')
    return 'sound protocol: checkpoints selected on a validation split of the training set, eval-mode tests'


def storage(G, data, ipc):
    """The distilled artefact's size next to the image budget it replaces (ipc uint8 images per class)."""
    image_bytes = data.num_classes * ipc * data.channel * data.im_size[0] * data.im_size[1]
    return dict(generator_params=common.count_parameters(G), generator_bytes=gan.generator_bytes(G),
                image_budget_bytes=image_bytes, ipc=ipc)


def storage_line(s):
    return (f'generator: {s["generator_params"]:,} parameters, {s["generator_bytes"] / 2 ** 20:.2f} MiB; '
            f'the same budget as images: ipc {s["ipc"]} = {s["image_budget_bytes"] / 2 ** 10:.1f} KiB as uint8 '
            f'(x{s["generator_bytes"] / s["image_budget_bytes"]:.1f})')


# ----------------------------------------------------------------------------------------------------------------
# The run: folder, log, checkpoints

class StageRun(runner.Run):
    """<output-dir><tag>/ holds the checkpoints, config.json and outputs/img_<epoch>.png; <logs-dir><tag>/logs.txt
    the log. Stages 1 and 2 give their GAN (G, D, both optimisers, the average or None): --resume restores it from
    last.pth (`resumed`: that checkpoint) and `save` writes its checkpoints."""

    def __init__(self, args, resumable=(), G=None, D=None, opt_g=None, opt_d=None, ema=None):
        self.dir = os.path.join(args.output_dir, args.tag)
        self.G, self.D, self.opt_g, self.opt_d, self.ema = G, D, opt_g, opt_d, ema
        self._config_written = False
        runner.check_same_data(args, [self.path('config.json')], 'pass another --tag or --output-dir')
        other = runner.recorded_args(self.path('config.json')).get('stage', args.stage)
        if other != args.stage:  # e.g. both stages on the default --tag: stage 2 would replace its input, best.pth
            tag = f'{args.tag}_{({1: "gan"} | cli.NEXT_TAG)[args.stage]}'
            raise UserError(f'{self.dir} holds a DiM stage-{other} run, whose files this stage-{args.stage} run would '
                            f'replace; pass another --tag (e.g. --tag {tag})')
        os.makedirs(self.dir, exist_ok=True)
        super().__init__(args, resumable, self.dir, checkpoint=self.path('last.pth'),
                         log=os.path.join(args.logs_dir, args.tag, 'logs.txt'), lock=self.path('run.lock'),
                         lock_what=self.dir, advice='pass another --tag', key='args',
                         needs=gan.GAN_KEYS + ('state', 'args'))
        for line in args.notes:
            self.log(f'warning: {line}')
        if args.stage in (1, 2):
            self.warn_fresh_start()
        if self.resumed:
            gan.load_gan_state(self.resumed, G, D, opt_g, opt_d, ema, '--resume', self.ckpt_path)

    def path(self, name):
        return os.path.join(self.dir, name)

    def write_config(self):
        """config.json, written with the run's first checkpoint or results (not when it starts), so that it always
        describes the files beside it: a run that fails at its first step leaves an earlier run's config alone."""
        if not self._config_written:
            common.write_json(self.path('config.json'), dict(args=config(self.args), protocol=protocol_label(self.args),
                                                             versions=common.versions(),
                                                             precision=common.precision_text(self.args),
                                                             world_size=parallel.world_size()))
            self._config_written = True

    def save_gan(self, name, epoch, **extra):
        """A GAN checkpoint: gan.gan_state plus epoch, args (config(args)) and `extra` (selection, state)."""
        self.write_config()
        state = gan.gan_state(self.G, self.D, self.opt_g, self.opt_d, self.ema)
        common.atomic_save(dict(state, epoch=epoch, args=config(self.args), **extra), self.path(name))

    def link(self, name, other):
        """`other` as a second name of the checkpoint `name` (a copy where hard links are not possible): same
        bytes, no second write."""
        if not parallel.is_main():
            return
        src, dst = self.path(name), self.path(other)
        tmp = os.path.join(self.dir, f'.{other}.link.tmp')  # swept when the next run starts, if left
        if os.path.exists(tmp):
            os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)

    def header(self, data, G):
        """The log's opening lines: data, device, processes, protocol, validation split, the generator's size,
        the arguments."""
        args = self.args
        self.log(f'DiM stage {args.stage} {args.tag}: {data.name} ({data.num_classes} classes, '
                 f'{data.channel}x{data.im_size[0]}x{data.im_size[1]}), device {args.device}, seed {args.seed}')
        if parallel.world_size() > 1:
            self.log(f'torchrun: {parallel.world_size()} processes, data parallel: each takes its share of every '
                     f'epoch\'s batches of {args.batch_size} and the gradients are averaged (effective batch '
                     f'{parallel.world_size() * args.batch_size}); rank 0 writes')
        self.log(f'protocol: {protocol_label(args)}; precision: {common.precision_text(args)}')
        if data.val_idx is not None:
            self.log(f'validation split: {data.val_per_class} images per class held out of the training set '
                     f'({len(data.train_idx)} left for training)')
        self.log(storage_line(storage(G, data, args.ipc)))
        self.log(f'arguments: {config(args)}')

    @property
    def sampler(self):
        """The generator previewed, scored and validated: the average with --g_ema, else G."""
        return self.G if self.ema is None else self.ema.G

    def start_training(self, data, state):
        """Before stage 1 or 2 trains: the batch size checked, outputs/ made, and with --cas (while epochs remain)
        the classifier that scores the generator after every epoch."""
        args = self.args
        if len(data.train_idx) < args.batch_size:
            raise UserError(f'--batch-size {args.batch_size} exceeds the {len(data.train_idx)} training images')
        os.makedirs(self.path('outputs'), exist_ok=True)
        self.data, self.cas = data, None
        if args.cas and state['epoch'] < args.epochs:
            self.cas = ClassScore(data, args.seed)
            self.log(f'--cas: classifier trained on the real training images; CAS of the start: '
                     f'{100 * self.cas.score(self.sampler):.1f}%')

    def finish(self, state, data, next_stages):
        """The closing lines of stage 1 or 2: the best checkpoints, then the command of each next stage on best.pth
        (next_stages: {stage: the words before it}); the log and the lock closed. Returns the state."""
        log_best(self, state)
        for stage, words in next_stages.items():
            self.log(f'{words}: {cli.next_command(self.args, stage, self.path("best.pth"), data.num_classes)}')
        self.close()
        return state

    def epoch_done(self, epoch):
        """After an epoch's iterations: rank 0's BN statistics on every process, the preview
        outputs/img_<epoch>.png, and with --cas the classification accuracy score."""
        data = self.data
        parallel.broadcast_buffers(self.G, self.D, *([] if self.ema is None else [self.ema.G]))
        save_preview(self.sampler, self.path(os.path.join('outputs', f'img_{epoch}.png')), data.num_classes,
                     data.channel, self.args.seed)
        if self.cas is not None:
            self.log(f'epoch {epoch}: CAS {100 * self.cas.score(self.sampler):.1f}% (share of eval-mode samples of '
                     f'class c that a real-data classifier labels c; chance {100 / data.num_classes:.0f}%)')

    def batches(self, epoch, gan_step):
        """(it, x, y): the GAN batches of epoch `epoch` (epoch_plan), G and D in train mode, a progress bar."""
        idx = epoch_plan(self.args, self.data, gan_step, epoch)
        self.G.train()
        self.D.train()
        args = self.args
        self._progress = Progress(self.log, len(idx), desc=f'stage {args.stage} epoch {epoch}',
                                  bar=not args.no_progress, read_every=args.print_freq,
                                  where=f'stage {args.stage} epoch {epoch} iteration {{it}}',
                                  advice=f'lower --lr (now {args.lr})')
        for it in self._progress:
            yield (it, *self.data.batch(idx[it]))

    def iteration_done(self, epoch, it, parts):
        """Every --print-freq iterations (and at an epoch's last): the losses on the bar and in the log, and the
        divergence check. Reading the losses makes the host wait for the device, so not more often."""
        iterations = self._progress.total
        # A diverged GAN stays diverged: checked where the losses are logged, and before every checkpoint.
        parts = self._progress.read(it, parts, it + 1 == iterations)
        if parts is None:
            return
        self.log(f'epoch {epoch} iter {it + 1}/{iterations}: ' + ', '.join(f'{k} {v:.4f}' for k, v in parts.items()))


def epoch_plan(args, data, gan_step, epoch):
    """The training-image indices of epoch `epoch`'s GAN batches (a shuffled, drop_last pass, at most
    --iters-per-epoch batches), on the device; the GAN draws from the stream (seed, 'stage<stage>', epoch). Under
    torchrun the processes split the epoch's batches (the same shuffle on each, as a distributed sampler does) and
    draw their own noise; their replicas stay equal through averaged gradients and, after the epoch, rank 0's BN
    statistics."""
    rng = make_generator(args.seed, f'stage{args.stage}', epoch)
    batches = epoch_batches(len(data.train_idx), args.batch_size, rng, args.iters_per_epoch)
    size = parallel.world_size()
    if size > 1:
        batches = batches[parallel.rank()::size][:len(batches) // size]  # equal counts: every step is collective
        rng = make_generator(args.seed, f'stage{args.stage}', epoch, 'rank', parallel.rank())
    gan_step.use_stream(rng)
    # the epoch's batch indices reach the device in one copy
    return data.train_idx[torch.stack(batches)].to(data.device) if batches else data.train_idx[:0]


@torch.no_grad()
def save_preview(G, path, num_classes, channel, seed):
    """K columns (classes 0..K-1 in every row), up to 10 rows, fixed noise, G in eval mode."""
    was = G.training
    G.eval()
    rows = max(1, min(10, 100 // num_classes))
    y = torch.arange(num_classes).repeat(rows).to(next(G.parameters()).device)
    x = gan.generate(G, y, make_generator(seed, 'preview'))
    G.train(was)
    runner.save_image_grid(path, x, [0.5] * channel, [0.5] * channel, nrow=num_classes)


# ----------------------------------------------------------------------------------------------------------------
# Selection of the best checkpoints

def keep_best(run, state, scores, epoch):
    """After a validation (scores: dim.validate_generator's), recorded in the state's history: best_<model>.pth
    for every model whose score improved (stage 2 also names it model_dict_<model>.pth, the reference's name), and
    best.pth when the mean score over the models improved (the first model's best_<model>.pth when it is the only
    model). A log line per model. The files are listed in state['pending'], for write_pending after last.pth."""
    args = run.args
    state['history'].append(dict(epoch=epoch, scores={m: s['score'] for m, s in scores.items()}))
    pending = state['pending'] = []  # [file, epoch, the selection to record | the file it is a second name of]
    for name, s in scores.items():
        best = state['best'].get(name)
        if best is None or s['score'] > best['score']:
            state['best'][name] = best = dict(score=s['score'], epoch=epoch)
            pending.append([f'best_{name}.pth', epoch, dict(model=name, split=s['split'], top1=s['score'],
                                                            protocol=args.protocol)])
            if args.stage == 2:
                pending.append([f'model_dict_{name}.pth', epoch, f'best_{name}.pth'])
        run.log(f'epoch {epoch}: {name} {s["split"]} accuracy {100 * s["score"]:.2f}% (top-5 '
                f'{100 * s["top5"]:.2f}%); best {100 * best["score"]:.2f}% at epoch {best["epoch"]}')
    mean = float(np.mean([s['score'] for s in scores.values()]))
    if state['best_all'] is not None and mean <= state['best_all']['score']:
        return
    state['best_all'] = dict(score=mean, epoch=epoch)
    split = list(scores.values())[-1]['split']  # the same for every model
    pending.append(['best.pth', epoch, f'best_{args.eval_model[0]}.pth' if len(scores) == 1 else dict(
        model='mean of ' + ', '.join(scores), split=split, top1=mean, protocol=args.protocol)])
    run.log(f'epoch {epoch}: new best.pth (mean {split} accuracy {100 * mean:.2f}%)')


def write_pending(run, state):
    """Write the best checkpoints keep_best chose, after last.pth: then a resume point exists whatever fails when,
    and a run resumed from a last.pth whose best files were not all written writes them first, from the GAN it
    restored, which is the one they select."""
    for name, epoch, what in state.get('pending', ()):
        if isinstance(what, str):
            run.link(what, name)
        else:
            run.save_gan(name, epoch, selection=what)
    state['pending'] = []


def log_best(run, state):
    for name, best in state['best'].items():
        run.log(f'best {name}: epoch {best["epoch"]}, accuracy {100 * best["score"]:.2f}% -> '
                f'{run.path(f"best_{name}.pth")}')
