"""The Landscape dashboard: `make serve`, then open /landscape. All logic is in workbench.dashboard.landscape."""
from workbench.dashboard.landscape import landscape_app
from workbench.dashboard.server import freeze_startup_heap

freeze_startup_heap()  # once per server process: closed tabs then cost no GIL stall
landscape_app(store_root="data/runs").servable()
