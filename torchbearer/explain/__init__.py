"""Explaining trained models: class activation maps, band attributions and embedding patterns.

``model.py`` adapts a checkpoint's network (segmentation from ``train``, or a timm classifier) to the libraries:
which layer, which class score. ``cams.py`` makes Grad-CAM, Grad-CAM++ and guided Grad-CAM through
pytorch-grad-cam, ``scene.py`` the same over a whole scene as a GeoTIFF, ``attributions.py`` per-band
importance through Captum, ``embeddings.py`` the feature vectors, their k-means patterns and the GeoPackage.
``patches.py`` gathers the inputs (a folder of patches, a train job's validation patches, a scene's windows).
These are libraries: paths and arrays in, files out, no store.
"""
