"""Depth: variance and gradient norm per block over training, for the LayerNorm placements.

Trains one transformer per chosen placement (Pre, Post, Mix, LN scaling) side by side and runs
``probes.depth_variance`` every few steps in each worker; draws a block-by-step heatmap per
placement and the latest per-block profile of every placement.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import panel as pn
import param

from ..train import TrainConfig
from ..viz.depth import depth_heatmap, depth_lines
from ._jobs import data_config
from ._lab import ProbeLab
from ._session import page, plotly_pane

PLACEMENTS = ("pre", "post", "mix", "ln_scaling")
METRICS = ("stream_out_variance", "grad_norm", "block_output_variance", "relative_update",
           "angular_distance", "jacobian_identity_distance", "skip_loss_increase")


class DepthLab(ProbeLab):
    """Per-block variance and gradients through training, one run per LN placement."""

    placements = param.ListSelector(default=list(PLACEMENTS), objects=list(PLACEMENTS),
                                    label="LN placements")
    probe_every = param.Integer(default=10, doc="steps between measurements")
    metric = param.Selector(objects=list(METRICS), default="stream_out_variance")

    controls = ("placements", "norm", "width", "depth", "batch_size", "optimizer", "lr", "steps",
                "seed", "probe_every", "metric")
    title = "depth"

    def __init__(self, store_root: str | Path | None = "data/runs", **params):
        super().__init__(store_root)
        self.model = "transformer"  # first: it narrows the data sets and resets the norm
        self.param.update(**{"depth": 6, "optimizer": "adam", "lr": 0.003, "steps": 150, **params})
        kw = {"height": 260, "sizing_mode": "stretch_width", "config": {"displaylogo": False}}
        self.heatmaps = [plotly_pane(depth_heatmap(_EMPTY, title=p), **kw) for p in PLACEMENTS]
        self.lines = plotly_pane(depth_lines({}), height=300, sizing_mode="stretch_width")

    def validate(self) -> None:
        if not self.placements:
            raise ValueError("pick at least one LN placement")
        if "mix" in self.placements:
            if self.model_config(placement="mix").num_post_blocks == 0:
                raise ValueError(f"Mix-LN at depth {self.depth} has no Post-LN block (the first "
                                 f"floor(0.25 x {self.depth}) = 0 blocks are Post-LN): it would "
                                 "be Pre-LN twice; use depth 4 or more, or drop mix")
        if not isinstance(self.probe_every, int) or not 1 <= self.probe_every <= self.steps:
            raise ValueError(f"probe every must be between 1 and steps={self.steps}, "
                             f"got {self.probe_every!r}")

    def variants(self) -> list[tuple[str, TrainConfig]]:
        return [(p, TrainConfig(model=self.model_config(placement=p), data=data_config("markov"),
                                steps=self.steps, batch_size=self.batch_size,
                                optimizer=self.optimizer, lr=self.lr, seed=self.seed, eval_every=0))
                for p in PLACEMENTS if p in self.placements]

    def probe_fns(self) -> tuple[dict, int]:
        from ..probes import depth_variance  # lazily: the app loads without it

        return {"depth_variance": depth_variance}, self.probe_every

    def clear_results(self) -> None:
        for pane, p in zip(self.heatmaps, PLACEMENTS, strict=True):
            pane.object = depth_heatmap(_EMPTY, title=p)
        self.lines.object = depth_lines({})

    @param.depends("metric", watch=True)
    def draw_results(self) -> None:
        frames = {n: pd.concat(f, ignore_index=True) for n, f in zip(self.names, self.probe_frames,
                                                                     strict=False) if f}
        for pane, p in zip(self.heatmaps, PLACEMENTS, strict=True):
            if p in frames:
                pane.object = depth_heatmap(frames[p], self.metric, title=f"{p}: {self.metric}")
        self.lines.object = depth_lines(frames, self.metric)

    def results_view(self):
        return pn.Column(pn.GridBox(*self.heatmaps, ncols=2, sizing_mode="stretch_width"),
                         self.lines, sizing_mode="stretch_width")

    def widgets(self) -> dict:
        return {**super().widgets(), "placements": pn.widgets.CheckButtonGroup,
                "probe_every": pn.widgets.IntInput}


_EMPTY = pd.DataFrame({"step": [], "metric": [], "layer": [], "value": []})


def depth_app(store_root: str | Path | None = "data/runs", template: bool = True):
    pn.extension("plotly")
    lab = DepthLab(store_root=store_root)
    lab.bind_session()
    return page("depth", lab.view(), template=template)
