"""The Runs dashboard: `make serve`, then open /runs. All logic is in workbench.dashboard.runs."""
from workbench.dashboard.runs import runs_app
from workbench.dashboard.server import freeze_startup_heap

freeze_startup_heap()  # once per server process: closed tabs then cost no GIL stall
runs_app(store_root="data/runs").servable()
