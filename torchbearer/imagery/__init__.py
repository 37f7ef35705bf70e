"""Sentinel-2 imagery: how a job gets its scenes (acquire.py), search and fetch (Copernicus Data Space, Earth
Search, local), the SAFE reader and the stacked scene cache. Libraries: they take paths, a ``report`` callable
and a ``should_stop``, never the state store (``acquire.job_scenes`` takes a job context only for its paths,
credentials, progress and stop request)."""
