"""Several runs of the scripts in one torchrun launch, for tests/test_parallel.py (not a test module itself):

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/torchrun_scenarios.py RUNS.json

RUNS.json holds [[script, argv], ...]; each script's main(argv) runs in turn in the same processes, as
`python -m torch.distributed.run ... <script> <argv>` would run it (bad input: one line and exit code 2, which
ends the launch), so that the test pays for starting torchrun and importing torch once instead of once per run.
The process group is joined by the first run's argument check (cli.check_args) and reused by the others.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import CL_DM
import main as main_dc
import main_DM
from condensation.common import run_cli

SCRIPTS = {'main_DM.py': main_DM.main, 'main.py': main_dc.main, 'CL_DM.py': CL_DM.main}

if __name__ == '__main__':
    with open(sys.argv[1]) as f:
        runs = json.load(f)
    for script, argv in runs:
        run_cli(lambda: SCRIPTS[script](argv))
