"""The Depth dashboard: `make serve`, then open /depth. All logic is in workbench.dashboard.depth."""
from workbench.dashboard.depth import depth_app
from workbench.dashboard.server import freeze_startup_heap

freeze_startup_heap()  # once per server process: closed tabs then cost no GIL stall
depth_app(store_root="data/runs").servable()
