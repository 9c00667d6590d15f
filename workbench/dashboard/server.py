"""Every dashboard on one Panel server (tests and benchmarks; ``make serve`` uses apps/*.py)."""
from __future__ import annotations

import gc
import threading
from pathlib import Path

import panel as pn


def app_factories(store_root: str | Path | None) -> dict:
    """``{url name: () -> page}`` for every dashboard, saving runs under ``store_root``."""
    from .arena import arena_app
    from .curvature import curvature_app
    from .depth import depth_app
    from .landscape import landscape_app
    from .live import live_app
    from .runs import runs_app

    runs_root = store_root if store_root is not None else "data/runs"
    return {"train_app": lambda: live_app(store_root=store_root),
            "arena": lambda: arena_app(store_root=store_root),
            "runs": lambda: runs_app(store_root=runs_root),
            "curvature": lambda: curvature_app(store_root=store_root),
            "depth": lambda: depth_app(store_root=store_root),
            "landscape": lambda: landscape_app(store_root=store_root)}


# A closed tab's session is destroyed (and its training stopped, see ``SessionApp``) once it has
# had no connection for UNUSED_SESSION_MS, checked every CHECK_UNUSED_MS: within ~2 s instead of
# Bokeh's default 15 s + 17 s. ``make serve`` passes the same numbers to ``panel serve``.
CHECK_UNUSED_MS = 1000
UNUSED_SESSION_MS = 1000


def serve_apps(port: int, *, store_root: str | Path | None = None, address: str = "127.0.0.1"):
    """Serve all dashboards at ``http://address:port/<name>`` from a background thread.

    Returns Panel's server thread; call ``.stop()`` on it. ``/liveness`` answers once it is up.
    """
    freeze_startup_heap()
    return pn.serve(app_factories(store_root), port=port, address=address, threaded=True,
                    show=False, liveness=True,
                    check_unused_sessions_milliseconds=CHECK_UNUSED_MS,
                    unused_session_lifetime_milliseconds=UNUSED_SESSION_MS,
                    websocket_origin=[f"{address}:{port}", f"localhost:{port}"])


_frozen = False


def freeze_startup_heap() -> None:
    """Take every object alive now out of the cyclic garbage collector's scans, once per process.

    Panel runs a full ``gc.collect()`` a few seconds after each closed session. With torch,
    pandas, plotly, bokeh and panel loaded that walks ~300k objects and holds the GIL for about
    0.3 s on this machine: every training thread on the server (``NORMLAB_JOB_ISOLATION=thread``)
    and the event loop stall that long whenever any tab closes (bench_dashboard saw it as
    20-30% lost throughput when training ran in threads). Frozen (``gc.freeze``), the
    imported libraries are skipped and a collection only walks what was allocated since.
    Called by the server entry points (``serve_apps`` and the ``apps/*.py`` scripts that
    ``make serve`` runs), after their imports; never on import of the library itself, since
    frozen objects are never collected as cycles.

    Also starts, in the background, the forkserver that training processes fork from
    (``_jobs``: jobs train in processes of their own), so the first Train click does not wait
    for it to import torch.
    """
    global _frozen
    if not _frozen:
        app_factories(None)  # import every dashboard module (and what they use) first
        gc.collect()  # do not freeze garbage
        gc.freeze()
        _frozen = True
        from ._jobs import default_isolation

        if default_isolation() == "process":
            from ..train.worker import warm_up

            threading.Thread(target=warm_up, name="normlab-forkserver", daemon=True).start()
