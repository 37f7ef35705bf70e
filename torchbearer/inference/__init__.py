"""Ensemble inference: windows and blending weights, streams of blended strips, the ensemble, the COG writer.

A library (no queue logic, no store): :func:`torchbearer.inference.ensemble.predict_scene` takes models, scene
stacks and an output path; the ``predict`` job kind (``torchbearer/jobs/predict.py``) glues it to a job.
"""
