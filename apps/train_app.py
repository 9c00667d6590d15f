"""Train one model live and watch its loss: `make serve`, then open /train_app.

`?autostart=1` starts a run as soon as the page loads. All logic is in
workbench.dashboard.live; finished and diverged runs are saved to data/runs/.
"""
from workbench.dashboard.live import live_app

live_app(store_root="data/runs").servable()
