"""The daemon: watches the queue folder, decides what runs next, starts and watches workers.

It never runs ML code itself. :class:`~torchbearer.daemon.engine.Engine` ties the parts together.
"""
