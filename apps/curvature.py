"""The Curvature dashboard: `make serve`, then open /curvature. All logic is in workbench.dashboard.curvature."""
from workbench.dashboard.curvature import curvature_app
from workbench.dashboard.server import freeze_startup_heap

freeze_startup_heap()  # once per server process: closed tabs then cost no GIL stall
curvature_app(store_root="data/runs").servable()
