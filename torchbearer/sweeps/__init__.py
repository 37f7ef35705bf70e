"""Hyper-parameter sweeps: a search space over a base job, an Optuna study, and trials queued as jobs.

``space`` parses and checks search spaces and writes trial values into a base job (light: no Optuna import);
``study`` holds the Optuna study of a sweep in a journal file; ``trials`` is the one place a sweep touches the
state store (queueing, cancelling and reading its trial jobs); ``report`` writes ``sweep.csv`` and
``best.json``. The ``sweep`` kind (``jobs/sweep.py``) glues them together.
"""
