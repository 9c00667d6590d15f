"""Panel dashboards: state in ``param.Parameterized`` classes, rendered by thin views.

Not part of the core (imports panel and plotly); ``apps/*.py`` only wire these to a page.
Arena (strategies side by side), Runs (the store), Curvature, Depth, Landscape and the single
live run (``live``); ``server.serve_apps`` serves them all from a thread (tests, benchmarks).
"""
from .live import LiveTraining, live_app, serve_live

__all__ = ["LiveTraining", "live_app", "serve_live"]
