"""The Depth dashboard: `make serve`, then open /depth. All logic is in workbench.dashboard.depth."""
from workbench.dashboard.depth import depth_app

depth_app(store_root="data/runs").servable()
