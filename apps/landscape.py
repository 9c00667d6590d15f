"""The Landscape dashboard: `make serve`, then open /landscape. All logic is in workbench.dashboard.landscape."""
from workbench.dashboard.landscape import landscape_app

landscape_app(store_root="data/runs").servable()
