"""The reproduction registry that reproduce.py runs: one row per published cell (and per cell this project measured
itself), each with the command lines of our own entry scripts that reproduce it at every tier.

A cell's accuracy is read from one run of one entry script, a *stage*. Stages that several cells read (one DM set
evaluated on several architectures, a DiM generator that validate.py and main_ITGAN.py both use) run once. A stage's
flags are written as on the command line, per tier; reproduce.py adds the data, output and device flags. `{id}` in
a flag is the output folder of stage `id` (a generator checkpoint an earlier stage wrote).

Every published number names its source; a tier without a measured reference says so ("none yet").
"""
from collections import namedtuple

from condensation.methods.dc import recommended_dsa_strategy

TIERS = {
    'smoke': 'toy size, seconds each on a CPU: every command runs end to end (the test suite runs this tier on '
             'fixtures)',
    'cpu': "minutes per MNIST cell on 2 CPU cores: each budget cut to a few iterations and 2 short evaluations",
    'quick': "the reduced protocols of docs/results.md: the MNIST + CIFAR-10 suite in about 10 minutes on one H200 "
             "(estimate); up to an hour per cell on 2 CPU cores",
    'paper': "the published protocol",
}

# A published number or a reference this project measured: mean ± std in %, over n networks (x experiments/seeds).
# `source`: paper and table, or device and date; `informative`: unconfirmed or read off a plot, so it does not
# decide a verdict on its own (the report says so).
Value = namedtuple('Value', 'mean std n source informative', defaults=(None, None, False))
# One run of one entry script: its flags at every tier.
Stage = namedtuple('Stage', 'id script flags')
# What a cell reads from its stage's outputs: kind 'condense' (main.py / main_DM.py), 'dim' (validate.py),
# 'itgan' (main_ITGAN.py) or 'cl' (CL_DM.py); `key` picks the architecture, mode or set (None: the only one).
Read = namedtuple('Read', 'stage kind key', defaults=(None,))
# `references`: {tier: [Value]}, from REFERENCES by the cell's id.
Cell = namedtuple('Cell', 'id method dataset size stages read published cuts note references', defaults=('', {}))

# ---------------------------------------------------------------------------------------------------------------
# Sources

R_K = ("VICO-UoE/DatasetCondensation README ({paper}); std: KIP-ConvNet paper (Nguyen et al., NeurIPS 2021), "
       "Table 1")
DC_SRC = R_K.format(paper='the DC paper, Zhao, Mopuri & Bilen, ICLR 2021')
DSA_SRC = R_K.format(paper='the DSA paper, Zhao & Bilen, ICML 2021')
LATER = ('as restated in the comparison tables of later papers (NUS-HPC-AI-Lab/DATM, uitrbn/IDM, '
         'Hansong-Zhang/DANCE)')
DM_SRC = 'DM paper (Zhao & Bilen, WACV 2023, arXiv 2110.04181), Table 1'
DIM_SRC = 'DiM paper (Wang et al., arXiv 2303.04707), abstract; also the vimar-gu/DiM README'
CL_SRC = ("read off the continual-learning figure of snu-mllab/Efficient-Dataset-Condensation, which plots the DM "
          "paper's protocol (CIFAR-100, ConvNet, 20 ipc), about ±1 point")


def pub(mean, std, source, informative=False):
    return Value(mean, std, None, source, informative)


PUBLISHED = {
    ('DC', 'MNIST'): {1: pub(91.7, 0.5, DC_SRC), 10: pub(97.4, 0.2, DC_SRC), 50: pub(98.8, 0.1, DC_SRC)},
    ('DC', 'CIFAR10'): {1: pub(28.3, 0.5, DC_SRC), 10: pub(44.9, 0.5, DC_SRC), 50: pub(53.9, 0.5, DC_SRC)},
    ('DC', 'CIFAR100'): {1: pub(12.8, 0.3, DC_SRC), 10: pub(25.2, 0.3, DC_SRC)},
    ('DSA', 'MNIST'): {1: pub(88.7, 0.6, DSA_SRC), 10: pub(97.8, 0.1, DSA_SRC), 50: pub(99.2, 0.1, DSA_SRC)},
    ('DSA', 'CIFAR10'): {1: pub(28.8, 0.7, DSA_SRC), 10: pub(52.1, 0.5, DSA_SRC), 50: pub(60.6, 0.5, DSA_SRC)},
    ('DSA', 'CIFAR100'): {1: pub(13.9, 0.3, DSA_SRC), 10: pub(32.3, 0.3, DSA_SRC),
                          50: pub(42.8, 0.4, f'DSA paper (Zhao & Bilen, ICML 2021), {LATER}')},
    ('DM', 'MNIST'): {ipc: pub(m, s, f'{DM_SRC} (unconfirmed: transcribed from memory of the table)', True)
                      for ipc, m, s in ((1, 89.7, 0.6), (10, 97.5, 0.1), (50, 98.6, 0.1))},
    ('DM', 'CIFAR10'): {1: pub(26.0, 0.8, DM_SRC), 10: pub(48.9, 0.6, DM_SRC), 50: pub(63.0, 0.4, DM_SRC)},
    ('DM', 'CIFAR100'): {1: pub(11.4, 0.3, DM_SRC), 10: pub(29.7, 0.3, DM_SRC), 50: pub(43.6, 0.4, DM_SRC)},
}

# ---------------------------------------------------------------------------------------------------------------
# References this project measured, per cell and tier (the same command; several devices where measured)

CPU = "CPU, 2 cores of an AMD EPYC VM, one thread, shared with other jobs (docs/results.md)"
CPU_REPRO = "CPU, 2 cores of an AMD EPYC VM, one thread, shared with other jobs (reproduce.py; docs/results.md)"
H200 = "one NVIDIA H200, before the CUDA-graph work"


def ref(mean, std, n, device, date):
    return Value(mean, std, n, f'{device}, {date}')


REFERENCES = {
    'dm-mnist-1': {'cpu': [ref(83.59, 1.35, 2, CPU_REPRO, '2026-12-04')]},
    'dm-mnist-10': {'cpu': [ref(86.72, 1.16, 2, CPU_REPRO, '2026-12-04')],
                    'quick': [ref(95.70, 0.11, 3, CPU, '2026-11-21')]},
    'dm-mnist-50': {'cpu': [ref(88.48, 0.61, 2, CPU_REPRO, '2026-12-04')]},
    'dm-cifar10-10': {'quick': [ref(44.54, 0.18, 3, CPU, '2026-11-21')]},
    'dc-mnist-1': {'cpu': [ref(45.27, 4.00, 2, CPU_REPRO, '2026-12-04')],
                   'quick': [ref(84.88, 0.91, 3, CPU, '2026-11-21')]},
    'dc-mnist-10': {'cpu': [ref(12.02, 0.80, 2, CPU_REPRO, '2026-12-04')],
                    'quick': [ref(73.35, 0.99, 2, CPU, '2026-11-21')]},
    'dc-mnist-50': {'cpu': [ref(5.53, 0.33, 2, CPU_REPRO, '2026-12-04')]},
    'dsa-mnist-1': {'cpu': [ref(59.96, 0.65, 2, CPU_REPRO, '2026-12-04')],
                    'quick': [ref(81.68, 0.80, 3, CPU, '2026-11-21')]},
    'dsa-mnist-10': {'cpu': [ref(81.44, 0.41, 2, CPU_REPRO, '2026-12-04')],
                     'quick': [ref(94.71, 0.12, 2, CPU, '2026-11-21')]},
    'dsa-mnist-50': {'cpu': [ref(87.06, 0.34, 2, CPU_REPRO, '2026-12-04')]},
    'dim-mnist-10-onthefly': {'cpu': [ref(65.38, 2.34, 2, CPU_REPRO, '2026-12-04')],
                              'quick': [ref(95.65, 0.57, 2, CPU, '2026-11-26'),
                                        ref(95.50, 0.12, 2, H200, '2026-12-04')]},
    'dim-mnist-10-fixed': {'cpu': [ref(72.11, 0.33, 2, CPU_REPRO, '2026-12-04')],
                           'quick': [ref(92.09, 0.23, 2, CPU, '2026-11-26'),
                                     ref(90.38, 0.20, 2, H200, '2026-12-04')]},
    'itgan-mnist-10': {'cpu': [ref(79.09, 1.74, 2, CPU_REPRO, '2026-12-04')]},
    'cl-random-mnist-5': {'cpu': [ref(76.23, 0.67, 2, CPU_REPRO, '2026-12-04')],
                          'quick': [ref(88.94, 0.07, 2, CPU, '2026-11-26'),
                                    ref(88.96, 0.04, 2, H200, '2026-12-04')]},
    'cl-dim-mnist-5': {'cpu': [ref(38.00, 0.11, 2, CPU_REPRO, '2026-12-04')],
                       'quick': [ref(89.98, 0.55, 2, CPU.replace('one thread', 'two threads'), '2026-11-26'),
                                 ref(89.61, 0.83, 2, H200, '2026-12-04')]},
    'cl-dm-mnist-5': {'cpu': [ref(79.98, 2.03, 2, CPU_REPRO, '2026-12-04')],
                      'quick': [ref(91.93, 0.27, 2, CPU, '2026-11-26')]},
    'cl-random-cifar10-5': {'quick': [ref(29.6, 0.2, 4, CPU, '2026-11-21')]},
    'cl-herding-cifar10-5': {'quick': [ref(37.2, 0.2, 4, CPU, '2026-11-21')]},
    'cl-kcenter-cifar10-5': {'quick': [ref(14.5, 2.1, 4, CPU, '2026-11-21')]},
    'cl-dm-cifar10-5': {'quick': [ref(42.1, 1.1, 4, CPU, '2026-11-21')]},
}

# ---------------------------------------------------------------------------------------------------------------
# Stages: DM, DC and DSA (main_DM.py, main.py)

TIER_NAMES = tuple(TIERS)


def digits(dataset):
    return dataset == 'MNIST'


SMOKE_IPC = 2  # the smoke tier's sets hold at most this many images per class
SMOKE_EVAL = '--num_exp 1 --num_eval 1 --epoch_eval_train 1 --eval_final_only --model ConvNetW32'
DM_TIERS = {
    'smoke': f'--Iteration 2 --batch_real 2 {SMOKE_EVAL}',
    'cpu': '--Iteration 20 --batch_real 64 --num_exp 1 --num_eval 2 --epoch_eval_train {epochs} --eval_final_only',
    'quick': '--Iteration 200 --batch_real 64 --num_exp 1 --num_eval 3 --epoch_eval_train 300 --eval_every 200',
    'paper': '--Iteration 20000 --batch_real 256 --num_exp 5 --num_eval 20 --epoch_eval_train 1000 --eval_final_only',
}
DM_CUTS = {
    'smoke': f'toy size: ipc {SMOKE_IPC} at most, 2 iterations, ConvNetW32, 1 network x 1 epoch',
    'cpu': '20 iterations (paper 20,000), batch_real 64 (256), 1 experiment x 2 networks x 20 epochs (10 at ipc 50; '
           'paper 5 x 20 x 1000)',
    'quick': "docs/results.md's CPU reduced protocol: 200 iterations (paper 20,000), batch_real 64 (256), "
             "1 experiment x 3 networks x 300 epochs (5 x 20 x 1000)",
    'paper': "the DM paper's protocol; only the last iteration is evaluated (the other evaluation points of the "
             "original do not change the reported number)",
}
DC_TIERS = {
    'smoke': f'--Iteration 1 --outer_loop 2 --inner_loop 1 --batch_real 2 {SMOKE_EVAL}',
    'cpu': {1: '--Iteration 5 --batch_real 64 --num_exp 1 --num_eval 2 --epoch_eval_train 20 --eval_final_only',
            10: '--Iteration 1 --outer_loop 2 --inner_loop 5 --batch_real 64 --num_exp 1 --num_eval 2 '
                '--epoch_eval_train 20 --eval_final_only',
            50: '--Iteration 1 --outer_loop 2 --inner_loop 1 --batch_real 64 --num_exp 1 --num_eval 2 '
                '--epoch_eval_train 10 --eval_final_only'},
    'quick': {1: '--Iteration 50 --batch_real 64 --num_exp 1 --num_eval 3 --epoch_eval_train 300 --eval_every 50',
              10: '--Iteration 2 --batch_real 64 --num_exp 1 --num_eval 2 --epoch_eval_train 300 --eval_every 2',
              50: '--Iteration 1 --batch_real 64 --num_exp 1 --num_eval 2 --epoch_eval_train 300 --eval_every 1'},
    'paper': '--Iteration 1000 --batch_real 256 --num_exp 5 --num_eval 20 --epoch_eval_train {epochs} '
             '--eval_final_only',
}
DC_CUTS = {
    'smoke': f'toy size: ipc {SMOKE_IPC} at most, 1 iteration of 2 matching steps and 1 network epoch, ConvNetW32, '
             f'1 network x 1 epoch',
    'cpu': {1: '5 iterations (paper 1000), batch_real 64 (256), 1 experiment x 2 networks x 20 epochs',
            10: '1 iteration (1000) of 2 matching steps and 5 network epochs (10 and 50), batch_real 64, '
                '1 x 2 networks x 20 epochs',
            50: '1 iteration (1000) of 2 matching steps and 1 network epoch (50 and 10), batch_real 64, '
                '1 x 2 networks x 10 epochs'},
    'quick': {1: "docs/results.md's reduced protocol: 50 iterations (paper 1000), batch_real 64 (256), 1 experiment x "
                 "3 networks x 300 epochs (5 x 20 x 300/1000)",
              10: "docs/results.md's reduced protocol: 2 iterations (paper 1000), batch_real 64 (256), 1 experiment x "
                  "2 networks x 300 epochs",
              50: '1 iteration (paper 1000), batch_real 64 (256), 1 experiment x 2 networks x 300 epochs'},
    'paper': "the paper's protocol (DC: 300 evaluation epochs, 1000 where it augments, on MNIST; DSA: 1000); only "
             "the last iteration is evaluated",
}


def tier_flags(table, tier, ipc, **fmt):
    flags = table[tier]
    flags = flags[ipc] if isinstance(flags, dict) else flags
    return flags.format(**fmt)


def condense_stage(method, dataset, ipc, stage_id=None, eval_mode=None):
    """main_DM.py (DM) or main.py (DC, DSA) at every tier."""
    common = f'--dataset {dataset} --model ConvNet --ipc {ipc}'
    if method == 'DM':
        script, table = 'main_DM.py', DM_TIERS
        base = f'{common} --init real --lr_img 1 --dsa_strategy {recommended_dsa_strategy(dataset)}'
        fmt = dict(epochs=10 if ipc >= 50 else 20)
    else:
        init = 'noise' if method == 'DC' else f'real --dsa_strategy {recommended_dsa_strategy(dataset)}'
        script, base, table = 'main.py', f'--method {method} {common} --init {init} --lr_img 0.1', DC_TIERS
        fmt = dict(epochs=1000 if method == 'DSA' or digits(dataset) else 300)
    flags = {t: f'{base} {tier_flags(table, t, ipc, **fmt)}' for t in TIER_NAMES}
    flags['smoke'] += f' --ipc {min(ipc, SMOKE_IPC)}'
    if eval_mode:
        flags = {t: f + f' --eval_mode {eval_mode}' for t, f in flags.items()}
        # the reference README's cross-architecture recipe evaluates 5 networks per architecture
        flags['paper'] = flags['paper'].replace('--num_eval 20', '--num_eval 5')
        flags['quick'] = flags['quick'].replace('--eval_every 200', '--eval_final_only')
    return Stage(stage_id or f'{method.lower()}-{dataset.lower()}-{ipc}', script, flags)


def condense_cuts(method, ipc):
    table = DM_CUTS if method == 'DM' else DC_CUTS
    return {t: tier_flags(table, t, ipc) for t in TIER_NAMES}


# ---------------------------------------------------------------------------------------------------------------
# Stages: DiM (gen_condense.py, pool_match.py, validate.py) and IT-GAN (main_ITGAN.py)

# The project's recipe (README): a learned class embedding, a projection critic, an averaged generator, MSGAN's
# mode-seeking term and a lazy gradient penalty.
PROJECT_GAN = '--cond embed --critic projection --g_ema 0.999 --mode_seeking 1 --gp_every 4'
GAN_SHAPE = '--cond embed --critic projection'  # what validate.py and later stages must repeat
SMOKE_GAN = '--gan_width 8 --batch-size 8 --epochs 1 --iters-per-epoch 2 --epochs-eval 1 --eval-interval 1'
STAGE1_TIERS = {  # gen_condense.py on CIFAR-10
    'smoke': f'{SMOKE_GAN} --ipc 1 --val_split 2',
    'cpu': '--gan_width 32 --batch-size 64 --lr 2e-4 --epochs 1 --iters-per-epoch 20 --ipc 10 --epochs-eval 5 '
           '--eval-interval 1',
    'quick': '--epochs 1 --iters-per-epoch 60 --ipc 10 --epochs-eval 50 --eval-interval 1',
    'paper': '--epochs 150 --batch-size 128 --lr 1e-4 --ipc 50 --epochs-eval 1000 --eval-interval 10',
}
STAGE2_TIERS = {  # pool_match.py on CIFAR-10
    'smoke': '--gan_width 8 --batch-size 8 --epochs 1 --iters-per-epoch 1 --epochs-match-train 1 --ipc 1 '
             '--epochs-eval 1 --eval-interval 1 --pool convnet',
    'cpu': '--gan_width 32 --batch-size 64 --epochs 1 --iters-per-epoch 5 --epochs-match-train 2 --ipc 10 '
           '--epochs-eval 5 --eval-interval 1',
    'quick': '--epochs 1 --iters-per-epoch 25 --epochs-match-train 4 --ipc 10 --epochs-eval 50 --eval-interval 1',
    'paper': '--epochs 100 --batch-size 64 --lr 5e-6 --epochs-match-train 16 --ipc 50 --epochs-eval 1000 '
             '--eval-interval 10',
}
STAGE3_TIERS = {  # validate.py, ipc 10 on-the-fly at batch 100 (DiM's README: at most K·ipc)
    'smoke': f'--gan_width 8 --epochs-eval 1 --num_eval 1 --batch-size 10 --ipc {SMOKE_IPC}',
    'cpu': '--gan_width 32 --epochs-eval 5 --num_eval 2',
    'quick': '--epochs-eval 100 --num_eval 2',
    'paper': '--epochs-eval 1000 --num_eval 5',
}
DIM_CUTS = {
    'smoke': f'toy size: width 8, 2 GAN iterations per stage, ipc {SMOKE_IPC}, 1 network x 1 epoch',
    'cpu': 'width 32 (paper 196), batch 64, 20 stage-1 iterations (58,500) and 5 stage-2 iterations (78,000), '
           '2 networks x 5 epochs (5 x 1000)',
    'quick': '60 stage-1 iterations (paper 58,500), 25 stage-2 iterations of 4 pool steps (78,000 of 16), '
             '2 networks x 100 epochs (5 x 1000)',
    'paper': "DiM's README recipe at its defaults (stage 1: 150 epochs; stage 2: 100 epochs); validate.py at ipc 10, "
             "batch 100, 5 networks x 1000 epochs",
}


def per_tier(base, tiers):
    return {t: ' '.join(s for s in (base, tiers[t]) if s) for t in TIER_NAMES}


DIM_MNIST_GAN = ('--data mnist --gan_width 32 ' + PROJECT_GAN + ' --lr 2e-4 --batch-size 64 --ipc 10 --val_split 100')
DIM_MNIST_TIERS = {
    'smoke': f'{SMOKE_GAN} --ipc 1 --val_split 2',
    'cpu': '--epochs 2 --iters-per-epoch 200 --epochs-eval 10 --eval-interval 1',
    'quick': '--epochs 8 --iters-per-epoch 330 --epochs-eval 50 --eval-interval 1',
    'paper': '--gan_width 196 --batch-size 128 --lr 1e-4 --epochs 150 --epochs-eval 1000 --eval-interval 10',
}
DIM_MNIST_TEST = {
    'smoke': f'--gan_width 8 --epochs-eval 1 --num_eval 1 --batch-size 10 --ipc {SMOKE_IPC}',
    'cpu': '--epochs-eval 20 --num_eval 2',
    'quick': '--epochs-eval 300 --num_eval 2',
    'paper': '--gan_width 196 --epochs-eval 1000 --num_eval 5',
}
DIM_MNIST_CUTS = {
    'smoke': DIM_CUTS['smoke'],
    'cpu': 'width 32 (reference 196), 400 GAN iterations of 64, 2 networks x 20 epochs',
    'quick': "the README's MNIST recipe: width 32 (reference 196), 2640 GAN iterations of 64, 2 networks x 300 "
             "epochs",
    'paper': "the project's options at DiM's CIFAR-10 budget (width 196, 150 epochs); 5 networks x 1000 epochs",
}
ITGAN_TIERS = {
    'smoke': f'--ipc {SMOKE_IPC} --model ConvNetW32 --invert_iters 2 --Iteration 2 --batch_real 2 --batch_syn 2 '
             f'--eval_model ConvNetW32 --epoch_eval_train 1 --num_eval 1 --curve_at 1',
    'cpu': '--model ConvNetW32 --invert_iters 20 --Iteration 10 --lr_latent 0.01 --batch_real 64 --eval_model ConvNet '
           '--epoch_eval_train 10 --num_eval 2 --curve_at 5',
    'quick': '--model ConvNetW32 --invert_iters 200 --Iteration 150 --lr_latent 0.01 --batch_real 64 '
             '--eval_model ConvNet --epoch_eval_train 50 --num_eval 2 --curve_at 10 25',
    'paper': '--model ConvNet --invert_iters 1000 --Iteration 1000 --lr_latent 0.001 --batch_real 256 '
             '--eval_model ResNet18BN --epoch_eval_train 200 --num_eval 3',
}
ITGAN_CUTS = {
    'smoke': f'toy size: ipc {SMOKE_IPC}, 2 inversion and 2 IT-GAN steps, 1 network x 1 epoch',
    'cpu': '20 inversion steps (paper 1000), 10 IT-GAN steps (1000) at lr 0.01, ConvNetW32 matching network, '
           '2 ConvNets x 10 epochs',
    'quick': "docs/results.md's reduced protocol: 200 inversion steps, 150 IT-GAN steps at lr 0.01, ConvNetW32 "
             "matching network, 2 ConvNets x 50 epochs",
    'paper': "the IT-GAN paper's settings (inversion lr 0.1, latent lr 0.001, 3 ResNet18BN x 200 epochs) at ipc 10; "
             "the paper inverts every training image",
}


def dim_stages():
    out = []
    for recipe, gan in (('ref', '--compat reference'), ('proj', PROJECT_GAN)):
        shape = '--compat reference' if recipe == 'ref' else GAN_SHAPE
        out.append(Stage(f'dim-cifar10-{recipe}-gan', 'gen_condense.py',
                         per_tier(f'--data cifar10 {gan}', STAGE1_TIERS)))
        weight = f'{{dim-cifar10-{recipe}-gan}}/run/best.pth'
        if recipe == 'ref':  # stage 2 is part of the reference recipe; the project's recipe goes to validate.py
            out.append(Stage('dim-cifar10-ref-match', 'pool_match.py', per_tier(
                f'--data cifar10 --compat reference --match logit --match-aug --weight {weight}', STAGE2_TIERS)))
            weight = '{dim-cifar10-ref-match}/run/best.pth'
        models = 'convnet resnet18' if recipe == 'ref' else 'convnet'
        out.append(Stage(f'dim-cifar10-{recipe}-test', 'validate.py', per_tier(
            f'--data cifar10 {shape} --pretrain-weight {weight} --ipc 10 --batch-size 100 --eval-model {models} '
            f'--dim_eval onthefly', STAGE3_TIERS)))
    out.append(Stage('dim-mnist-gan', 'gen_condense.py', per_tier(DIM_MNIST_GAN, DIM_MNIST_TIERS)))
    out.append(Stage('dim-mnist-test', 'validate.py', per_tier(
        f'--data mnist --gan_width 32 {GAN_SHAPE} --pretrain-weight {{dim-mnist-gan}}/run/best.pth --ipc 10 '
        f'--batch-size 50 --dim_eval both', DIM_MNIST_TEST)))
    for dataset, gan in (('MNIST', 'dim-mnist-gan'), ('CIFAR10', 'dim-cifar10-proj-gan')):
        out.append(Stage(f'itgan-{dataset.lower()}', 'main_ITGAN.py', per_tier(
            f'--dataset {dataset} --generator {{{gan}}}/run/best.pth --ipc 10', ITGAN_TIERS)))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Stages: continual learning (CL_DM.py)

CL_EVAL = {
    'smoke': f'--seeds 0 --num_eval 1 --epoch_eval_train 1 --model ConvNetW32 --ipc {SMOKE_IPC}',
    'cpu': '--seeds 0 --num_eval 2 --epoch_eval_train 10',
    'quick': {'MNIST': '--seeds 0 --num_eval 2 --epoch_eval_train 50',
              'CIFAR10': '--seeds 0 1 --num_eval 2 --epoch_eval_train 100',
              'CIFAR100': '--seeds 0 --num_eval 2 --epoch_eval_train 100'},
    'paper': '--seeds 0 1 2 3 4 --num_eval 3 --epoch_eval_train 1000',
}
SMALL_GAN = '--gan_width 32 --gan_batch 64 --gan_lr 2e-4'
CL_MEMORY = {  # method -> tier -> the memory's budget flags
    'random': {},
    'herding': {'smoke': '--feature_epochs 0', 'cpu': '--feature_epochs 1', 'quick': '--feature_epochs 1',
                'paper': '--feature_epochs 20'},
    'kcenter': {'smoke': '--feature_epochs 0', 'cpu': '--feature_epochs 1', 'quick': '--feature_epochs 1',
                'paper': '--feature_epochs 20'},
    'DSA': {'smoke': '--Iteration 1 --batch_real 2 --outer_loop 1 --inner_loop 1',
            'cpu': '--Iteration 2 --batch_real 64 --outer_loop 2 --inner_loop 1',
            'quick': '--Iteration 10 --batch_real 64', 'paper': '--Iteration 1000 --lr_img 0.1 --batch_real 256'},
    'DM': {'smoke': '--Iteration 2 --batch_real 2', 'cpu': '--Iteration 10 --batch_real 64',
           'quick': '--Iteration 200 --batch_real 64', 'paper': '--Iteration 20000 --lr_img 1 --batch_real 256'},
    'DiM': {'smoke': '--gan_width 8 --gan_iters 2 --gan_batch 8', 'cpu': f'{SMALL_GAN} --gan_iters 100',
            'quick': {'MNIST': f'{SMALL_GAN} --gan_iters 1000', 'CIFAR10': f'{SMALL_GAN} --gan_iters 100 --seeds 0'},
            'paper': '--gan_width 196 --gan_iters 5000 --gan_batch 128 --gan_lr 1e-4'},
}
CL_CUTS = {
    'smoke': f'toy size: ipc {SMOKE_IPC}, 1 network x 1 epoch per step, toy memories',
    'cpu': 'seed 0 (paper 0-4), 2 networks x 10 epochs per step (3 x 1000); memories: DM 10 iterations, DiM width 32 '
           'x 100 GAN iterations, herding 1 feature epoch',
    'quick': "docs/results.md's reduced protocols: 1 seed (2 on CIFAR-10), 2 networks x 50 epochs per step (100 on "
             "CIFAR-10 and CIFAR-100; paper 3 x 1000); memories: DM 200 iterations of batch_real 64, DiM width 32 x "
             "1000 GAN iterations of 64 (100 and seed 0 only on CIFAR-10), herding 1 feature epoch",
    'paper': "the DM paper's protocol: seeds 0-4, 3 networks x 1000 epochs per step; DM 20,000 and DSA 1000 "
             "iterations per step; DiM at DiM's budget (5000 GAN iterations of 128, width 196)",
}
CL_IPC = {'MNIST': 10, 'CIFAR10': 10, 'CIFAR100': 20}


def cl_stage(method, dataset, steps):
    def flags(tier):
        ev = CL_EVAL[tier]
        memory = CL_MEMORY[method].get(tier, '')
        parts = [f'--dataset {dataset} --model ConvNet --method {method} --steps {steps} --ipc {CL_IPC[dataset]}',
                 ev[dataset] if isinstance(ev, dict) else ev, memory[dataset] if isinstance(memory, dict) else memory]
        return ' '.join(p for p in parts if p)
    return Stage(f'cl-{method.lower()}-{dataset.lower()}-{steps}', 'CL_DM.py', {t: flags(t) for t in TIER_NAMES})


# ---------------------------------------------------------------------------------------------------------------
# The registry

def build():
    """(stages by id, cells in report order)."""
    stages, cells = {}, []

    def add(stage):
        stages.setdefault(stage.id, stage)
        return stage.id

    for method in ('DM', 'DC', 'DSA'):
        for dataset in ('MNIST', 'CIFAR10', 'CIFAR100'):
            for ipc in (1, 10, 50):
                published = PUBLISHED[(method, dataset)].get(ipc)
                if published is None:
                    continue  # no published number for DC on CIFAR-100 at ipc 50
                sid = add(condense_stage(method, dataset, ipc))
                cid = f'{method.lower()}-{dataset.lower()}-{ipc}'
                cells.append(Cell(cid, method, dataset, f'ipc {ipc}', (sid,), Read(sid, 'condense'), published,
                                  condense_cuts(method, ipc)))
    sid = add(condense_stage('DM', 'CIFAR10', 10, 'dm-cifar10-10-poolM', eval_mode='M'))
    pool = ' on the 6 architectures of eval pool M (MLP, ConvNet, LeNet, AlexNet, VGG11, ResNet18)'
    cuts = dict(condense_cuts('DM', 10), quick=DM_CUTS['quick'] + '; the last iteration only' + pool,
                paper="the DM paper's synthesis; 5 experiments x 5 networks (the reference README's cross-architecture "
                      "recipe) at the last iteration" + pool)
    for arch in ('AlexNet', 'VGG11', 'ResNet18'):
        cells.append(Cell(f'dm-cifar10-10-{arch.lower()}', 'DM', 'CIFAR10', 'ipc 10', (sid,),
                          Read(sid, 'condense', arch), None, cuts,
                          f'a ConvNet set evaluated on {arch} (eval pool M); the DM paper\'s cross-architecture table '
                          f'(CIFAR-10 ipc 50, BN pool) is not transcribed here, so no published number'))

    for stage in dim_stages():
        add(stage)
    ref = ('dim-cifar10-ref-gan', 'dim-cifar10-ref-match', 'dim-cifar10-ref-test')
    for model, value in (('convnet', 72.6), ('resnet18', 75.1)):
        cells.append(Cell(f'dim-cifar10-10-reference-{model}', 'DiM', 'CIFAR10', 'ipc 10', ref,
                          Read(ref[-1], 'dim', ('onthefly', model, 'best_over_test_points')), pub(value, None, DIM_SRC),
                          DIM_CUTS, "DiM's own recipe and evaluation protocol (--compat reference: checkpoints and "
                                        "the reported number are the best over test points), on-the-fly"))
    proj = ('dim-cifar10-proj-gan', 'dim-cifar10-proj-test')
    cells.append(Cell('dim-cifar10-10-project', 'DiM', 'CIFAR10', 'ipc 10', proj,
                      Read(proj[-1], 'dim', ('onthefly', 'convnet', 'final')), None, DIM_CUTS,
                      "this project's recipe (embedding, projection critic, averaged generator, mode seeking, lazy "
                      "penalty) with the sound protocol (validation split, final accuracy); the paper has no number "
                      "for it: compare with dim-cifar10-10-reference-convnet"))
    mnist = ('dim-mnist-gan', 'dim-mnist-test')
    for mode in ('onthefly', 'fixed'):
        cid = f'dim-mnist-10-{mode}'
        cells.append(Cell(cid, 'DiM', 'MNIST', 'ipc 10', mnist, Read(mnist[-1], 'dim', (mode, 'convnet', 'final')),
                          None, DIM_MNIST_CUTS,
                          f"this project's recipe, {mode} evaluation, sound protocol; no published MNIST number is "
                          f"transcribed"))
    for dataset, gan in (('MNIST', 'dim-mnist-gan'), ('CIFAR10', 'dim-cifar10-proj-gan')):
        sid = f'itgan-{dataset.lower()}'
        cells.append(Cell(f'{sid}-10', 'IT-GAN', dataset, 'ipc 10', (gan, sid), Read(sid, 'itgan', ('itgan', None)),
                          None, ITGAN_CUTS,
                          "IT-GAN latents on this project's DiM generator (the paper's repository has no numbers)"))

    for dataset, methods, steps_list in (('MNIST', ('random', 'DM', 'DiM'), (5,)),
                                         ('CIFAR10', ('random', 'herding', 'kcenter', 'DM', 'DiM'), (5,)),
                                         ('CIFAR100', ('random', 'herding', 'DSA', 'DM'), (5, 10))):
        for steps in steps_list:
            for method in methods:
                sid = add(cl_stage(method, dataset, steps))
                published = None
                if dataset == 'CIFAR100' and steps == 5 and method in ('herding', 'DSA', 'DM'):
                    published = pub({'herding': 33.0, 'DSA': 31.0, 'DM': 39.0}[method], None, CL_SRC, True)
                cells.append(Cell(sid, f'CL {method}', dataset, f'{steps} steps', (sid,), Read(sid, 'cl'), published,
                                  CL_CUTS, 'accuracy on all classes after the last step'))
    return stages, [c._replace(references=REFERENCES.get(c.id, {})) for c in cells]


STAGES, CELLS = build()


# ---------------------------------------------------------------------------------------------------------------
# Time estimates: seconds per unit of work on each kind of device (driver.workload counts the units of a
# stage). Images are counted in 32x32 equivalents (a 28x28 MNIST image is 0.77) and weighted by the network's cost
# relative to ConvNet; a GAN image at width w counts (w/32)^2 of a 28x28 one at width 32. *: assumed, not measured.

RATE_BASIS = {
    'H200': "one H200 on 2026-12-04, before the CUDA-graph work (so an upper bound): DM CIFAR-10 ipc 10 at 15.95 ms "
            "per iteration, 10 ConvNets x 1000 epochs in about 23 s, DiM's MNIST stage 1 (2640 iterations and 8 "
            "validations) in 80 s; the split into per-step and per-image parts, the DC/DSA matching pass (3 DM "
            "iterations' worth of images) and the wide GAN (the CPU's rate x the H200/CPU ratio of DM) are assumed",
    'cpu': "this project's 2-core development CPU (AMD EPYC VM), one thread, shared with other jobs (so an upper "
           "bound on an idle machine): a least-squares fit to the wall times of the cpu tier's MNIST runs on "
           "2026-12-04 (5 s to start a run assumed)",
}
RATES = {
    'H200': dict(stage=3.0, dm_step=2e-3, dm_img=5.2e-6, match_step=3e-3, match_img=16e-6, train_step=2.0e-3,
                 train_img=3e-6, test_img=1e-6, gan_step=25e-3, gan_img=35e-6),
    'cpu': dict(stage=5.0, dm_step=0.0, dm_img=5.0e-3, match_step=0.0, match_img=2.3e-3, train_step=0.0,
                train_img=11e-3, test_img=1.4e-3, gan_step=0.0, gan_img=4.1e-3),
}
# Cost of a forward and backward pass relative to ConvNet (depth 3, width 128) at the same image size (assumed).
ARCH_COST = {'ConvNet': 1.0, 'ConvNetW32': 0.15, 'MLP': 0.2, 'LeNet': 0.2, 'AlexNet': 1.0, 'VGG11': 2.0,
             'ResNet18': 4.0, 'ResNet18BN': 4.0, 'convnet': 1.0, 'resnet10': 3.0, 'resnet18': 4.0,
             'resnet10_ap': 3.0, 'resnet18_ap': 4.0}
# Training images per dataset (the test sets hold 10,000 images each).
TRAIN_IMAGES = {'MNIST': 60000, 'CIFAR10': 50000, 'CIFAR100': 50000}
