"""Train one model live and watch its loss: `make serve`, then open /train_app.

`?autostart=1` starts a run as soon as the page loads. All logic is in
workbench.dashboard.live; finished and diverged runs are saved to data/runs/.
"""
from workbench.dashboard.live import live_app
from workbench.dashboard.server import freeze_startup_heap

freeze_startup_heap()  # once per server process: closed tabs then cost no GIL stall
live_app(store_root="data/runs").servable()
