"""The reproduction registry and what runs it for reproduce.py: `cells` (one row per published number, with
the entry-script commands that reproduce it at each tier) and `driver` (a stage's command, its estimated time,
running it, reading its accuracies, the verdict and the report).
"""
