"""Plots: functions from a tidy run frame to a plotly figure.

Not part of the core: these modules import plotly inside their functions, and nothing in
``workbench`` outside ``viz``/``dashboard`` imports them, so the core runs without plotly.
"""
from .curves import diverged_marker, labelled_hline, live_loss_figure, metric_curves, set_log_y

__all__ = ["diverged_marker", "labelled_hline", "live_loss_figure", "metric_curves", "set_log_y"]
