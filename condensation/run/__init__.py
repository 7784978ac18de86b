"""The machinery a run goes through, whatever its method: `cli` (every flag, declared once as data, and the
checks on them), `runner` (a run's files, lock, log, resume, its iteration bookkeeping and evaluation),
`dim_stages` (DiM's three stages: training, matching and their checkpoints), `continual_report` (the
continual-learning tables, CSV and plot), `progress` (every loop's iteration bookkeeping) and `prepare` (the command
that writes a dataset's prepared tensor file).
"""
