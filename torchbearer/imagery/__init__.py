"""Sentinel-2 imagery: search and fetch (Copernicus Data Space, Earth Search, local), the SAFE reader and the
stacked scene cache. Libraries only: they take paths and a ``report`` callable, never the state store."""
