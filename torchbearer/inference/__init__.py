"""Ensemble inference, one concept per module: members (``members``), their preparation (``prepare``), grouping by
resolution (``groups``), test-time augmentation (``tta``), combine rules (``combine``), windows and blending
weights (``windows``, ``blending``), streams of blended strips (``stream``), the COG writer (``writer``), resume
fingerprints (``resume``), map paths (``paths``), ONNX Runtime members (``onnx``) and the prediction itself
(``ensemble``).

A library (no queue logic, no store): :func:`torchbearer.inference.ensemble.predict_scene` takes models, scene
stacks and an output path; the ``predict`` job kind (``torchbearer/jobs/predict.py``) glues it to a job.
"""
