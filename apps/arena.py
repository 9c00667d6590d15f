"""The Arena dashboard: `make serve`, then open /arena. All logic is in workbench.dashboard.arena."""
from workbench.dashboard.arena import arena_app
from workbench.dashboard.server import freeze_startup_heap

freeze_startup_heap()  # once per server process: closed tabs then cost no GIL stall
arena_app(store_root="data/runs").servable()
