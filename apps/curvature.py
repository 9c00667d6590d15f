"""The Curvature dashboard: `make serve`, then open /curvature. All logic is in workbench.dashboard.curvature."""
from workbench.dashboard.curvature import curvature_app

curvature_app(store_root="data/runs").servable()
