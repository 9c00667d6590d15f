"""The Runs dashboard: `make serve`, then open /runs. All logic is in workbench.dashboard.runs."""
from workbench.dashboard.runs import runs_app

runs_app(store_root="data/runs").servable()
