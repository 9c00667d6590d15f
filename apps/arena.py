"""The Arena dashboard: `make serve`, then open /arena. All logic is in workbench.dashboard.arena."""
from workbench.dashboard.arena import arena_app

arena_app(store_root="data/runs").servable()
