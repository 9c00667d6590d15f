"""Panel dashboards: state in ``param.Parameterized`` classes, rendered by thin views.

Not part of the core (imports panel and plotly); ``apps/*.py`` only wire these to a page.
"""
from .live import LiveTraining, live_app, serve_live

__all__ = ["LiveTraining", "live_app", "serve_live"]
