"""What every dashboard's state object shares: its alert, status line, refresh loop and session.

A :class:`SessionApp` is a ``pn.viewable.Viewer`` whose ``refresh()`` runs every ``REFRESH_MS``
on the session's event loop while it has work in flight (tests call ``refresh()`` themselves:
without a served document there is no loop). Closing the tab calls ``stop()``.
"""
from __future__ import annotations

import html

import panel as pn
import param
from bokeh.models import CheckboxGroup as _BkCheckboxGroup

from ._jobs import refresh_callback, session_bound


class SessionApp(pn.viewable.Viewer):
    """Alert, status, Train/Stop buttons, periodic refresh, stop-on-close; subclasses implement
    ``start``/``refresh``/``stop``."""

    def __init__(self, **params):
        super().__init__(**params)
        self._periodic = None
        self._bound_session = False
        self.alert = pn.pane.Alert("", alert_type="danger", visible=False,
                                   sizing_mode="stretch_width")
        self.status = pn.pane.Markdown("idle", sizing_mode="stretch_width")
        self.train_button = pn.widgets.Button(name="Train", button_type="primary", width=100)
        self.stop_button = pn.widgets.Button(name="Stop", button_type="warning", width=100,
                                             disabled=True)
        self.train_button.on_click(lambda event: self.start())
        self.stop_button.on_click(lambda event: self.stop())

    def show_error(self, message: str) -> None:
        """A message on the page; never a traceback."""
        self.alert.object = message
        self.alert.visible = True

    def clear_error(self) -> None:
        self.alert.visible = False

    def start(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def refresh(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def start_periodic(self) -> None:
        if self._periodic is None and session_bound():
            self._periodic = refresh_callback(self.refresh)

    def stop_periodic(self) -> None:
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None

    def on_session_destroyed(self, session_context) -> None:
        """The tab closed: stop this session's work."""
        self.stop()
        self.stop_periodic()

    def bind_session(self) -> None:
        if not self._bound_session and session_bound():
            pn.state.on_session_destroyed(self.on_session_destroyed)
            self._bound_session = True

    def __panel__(self):
        self.bind_session()
        return self.view()


def page(title: str, body, *, template: bool = True):
    """The served page: ``body`` in a template (or bare, for tests)."""
    if not template:
        return body
    return pn.template.FastListTemplate(title=f"Normlab: {title}", main=[body],
                                        main_max_width="1600px", theme_toggle=False)


# The control column's width: Panel's input widgets are 300 px wide plus their margins, whatever
# a narrower ``pn.Param`` says, and would reach under the plots beside them.
FORM_WIDTH = 320


class LabeledCheckbox(pn.widgets.Checkbox):
    """``pn.widgets.Checkbox`` drawn as a one-box Bokeh ``CheckboxGroup``.

    Bokeh 3.9's ``Checkbox`` renders its ``<input>`` and its label text as unrelated siblings:
    the box has no accessible name (a screen reader says "checkbox", and Playwright's
    ``get_by_role("checkbox", name=...)`` finds nothing), and clicking the label does nothing.
    A ``CheckboxGroup`` wraps each box and its text in a ``<label>``, which fixes both. The
    Python side is ``Checkbox``'s: a bool ``value``, the label from ``name``.
    """

    _widget_type = _BkCheckboxGroup
    _rename = {**pn.widgets.Checkbox._rename, "label": "labels"}

    def _process_param_change(self, params):
        params = super()._process_param_change(params)
        if "active" in params:
            params["active"] = [0] if params["active"] else []
        if "labels" in params:
            params["labels"] = [params["labels"]]
        return params

    def _process_property_change(self, msg):
        if "active" in msg:
            msg = {**msg, "active": 0 in msg["active"]}
        return super()._process_property_change(msg)


class Form(pn.Param):
    """``pn.Param`` with every ``param.Boolean`` drawn as a :class:`LabeledCheckbox`."""

    mapping = {**pn.Param.mapping, param.Boolean: LabeledCheckbox}


# Panel draws no name above these (holoviz/panel#1313): a group of buttons "4 8 16" or "1 2"
# would sit in a form without saying what it chooses.
GROUP_WIDGETS = (pn.widgets.CheckBoxGroup, pn.widgets.CheckButtonGroup, pn.widgets.RadioBoxGroup,
                 pn.widgets.RadioButtonGroup)


def param_form(obj, parameters, widgets: dict, *, width: int = FORM_WIDTH) -> pn.Column:
    """``pn.Param(obj, parameters=..., widgets=...)`` as a column, in the order of
    ``parameters`` (``pn.Param`` alone orders by declaration, base class first), except that
    every parameter shown as a button or box group gets its label above it (its ``doc`` as a
    hover title)."""
    pieces, run = [], []
    order = {name: i for i, name in enumerate(parameters)}

    def flush():
        if run:
            pieces.append(Form(obj, parameters=list(run), widgets={k: widgets[k] for k in run
                                                                   if k in widgets},
                                   sort=lambda item: order.get(item[0], -1),
                                   show_name=False, width=width))
            run.clear()

    for name in parameters:
        spec = widgets.get(name)
        kind = spec.get("type") if isinstance(spec, dict) else spec
        if isinstance(kind, type) and issubclass(kind, GROUP_WIDGETS):
            flush()
            options = {k: v for k, v in spec.items() if k != "type"} if isinstance(spec, dict) else {}
            p = obj.param[name]
            label = pn.pane.HTML(f'<label title="{html.escape(p.doc or "")}">'
                                 f"{html.escape(p.label)}</label>", margin=(5, 10, 0, 10))
            pieces.append(pn.Column(label, kind.from_param(p, **options), width=width,
                                    margin=(0, 10)))  # aligned with pn.Param's widget box
        else:
            run.append(name)
    flush()
    return pn.Column(*pieces, width=width + 20, margin=0)  # the pieces bring their margins


def _detached(obj):
    """A copy of a figure's JSON dicts and lists; arrays and scalars are shared."""
    if isinstance(obj, dict):
        return {k: _detached(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_detached(v) for v in obj]
    return obj


class Plotly(pn.pane.Plotly):
    """Panel's Plotly pane, keeping its own copy of the figure's layout and traces.

    Panel's copy of the figure is shallow (``dict(fig._layout)``), so the Bokeh model's layout
    shared its nested dicts with the figure: a change made in place (``fig.update_yaxes(type=
    "linear")``, a new title text) changed the model's layout too, Panel's "has the layout
    changed?" test said no, and the browser kept the old axis. The Arena's "Log-scale loss axis"
    box did nothing on the page. With a copy, the comparison sees the change and sends it.
    """

    @classmethod
    def _plotly_json_wrapper(cls, fig):
        json = super()._plotly_json_wrapper(fig)
        return {**json, "data": _detached(json["data"]), "layout": _detached(json["layout"])}


def plotly_pane(fig, **kw):
    """A Plotly pane that is redrawn only on an explicit ``param.trigger("object")``.

    ``link_figure=False``: otherwise Panel hooks every property set on the figure
    (``fig.data[0].x = ...``) and sends a full update for each, several per refresh.
    No horizontal margin: with one, Panel sizes the plot to its outer element (margins
    included) after every page layout while Plotly's own resize after every redraw sizes it to
    the inner one, so a stretching plot jumped 20 px in width about once a second during a run,
    each jump a full redraw.
    """
    kw = {"sizing_mode": "stretch_width", "config": {"displaylogo": False}, "margin": (5, 0), **kw}
    return Plotly(fig, link_figure=False, **kw)
