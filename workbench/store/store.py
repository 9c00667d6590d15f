"""RunStore: one folder per run (config JSON, meta JSON, rows as Parquet), written atomically."""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from .._validate import check_choice
from .run import Run, empty_frame

_RUN_ID_CHARS = set("0123456789abcdef")
WEIGHTS = "weights.pt"


def _umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: put it straight back
    os.umask(mask)
    return mask


_UMASK = _umask()


def _write_temp(path: Path, data: bytes) -> str:
    """``data`` in a new temp file beside ``path`` (fsynced); its name, for ``os.replace``.

    ``mkstemp`` makes the file readable by its owner only; it gets the permissions an ordinary
    new file would (0666 less the umask), so a store shared by a group stays readable."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _json(path: Path, text: str | None = None):
    """A stored JSON file, read; a damaged one is a ValueError naming it."""
    try:
        return json.loads(path.read_text() if text is None else text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): the run was damaged; delete its "
                         "folder (RunStore.delete) or train it again") from None


class RunStore:
    """Stores runs under ``root/<run_id>/`` as ``config.json``, ``meta.json``, ``rows.parquet``
    and the model's final weights, ``weights.pt`` (a ``state_dict``, read back with
    ``weights_only=True``: no code is unpickled).

    ``meta.json`` is written last, so a run folder without it (a writer killed mid-way) is ignored
    by :meth:`has`, :meth:`get` and :meth:`load`, and overwritten by the next save.
    """

    def __init__(self, root: str | os.PathLike = "data/runs"):
        self.root = Path(root)

    def _dir(self, run_id: str) -> Path:
        if not run_id or not set(run_id) <= _RUN_ID_CHARS:
            raise ValueError(f"invalid run id {run_id!r}: expected lowercase hex digits")
        return self.root / run_id

    def save(self, run: Run) -> Path:
        """Write (or overwrite) a run; returns its folder.

        Every file is first written (and fsynced) to a temp file beside it. Then ``meta.json``
        is removed, the others are renamed into place and the new ``meta.json`` last: a
        half-overwritten run never looks complete (without ``meta.json`` it is not listed), and
        it is missing only for those few renames, not while the rows and weights are serialized
        and written (a reader listing the store meanwhile waits for it: :meth:`runs`). A failure
        before the renames leaves the old run as it was."""
        folder = self._dir(run.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        meta, weights = folder / "meta.json", folder / WEIGHTS
        state = run.state_dict()
        files = {folder / "config.json": json.dumps(run.config, indent=1, sort_keys=True).encode(),
                 folder / "rows.parquet": run.frame.reset_index(drop=True).to_parquet(index=False)}
        if state is not None:
            import torch

            buf = io.BytesIO()
            torch.save(state, buf)
            files[weights] = buf.getvalue()
        # the summary's final values, so that summary() need not read every run's rows; NaN and
        # inf as the strings float() reads back (JSON has no such numbers)
        finals = {k: v if math.isfinite(v) else str(v) for k, v in run.final_values().items()}
        files[meta] = json.dumps({**run.meta_dict(), "finals": finals}, indent=1,
                                 sort_keys=True).encode()  # last
        temps: dict[Path, str] = {}
        try:
            for path, data in files.items():
                temps[path] = _write_temp(path, data)
            if meta.exists():  # invalidate first so a half-overwritten run never looks complete
                meta.unlink()
            if state is None and weights.exists():  # an overwrite without weights: not another's
                weights.unlink()
            for path, tmp in temps.items():  # meta.json last
                os.replace(tmp, path)
        finally:
            for tmp in temps.values():
                if os.path.exists(tmp):  # a failure before its rename
                    os.unlink(tmp)
        return folder

    def has(self, run_id: str) -> bool:
        return (self._dir(run_id) / "meta.json").exists()

    def has_weights(self, run_id: str) -> bool:
        return self.has(run_id) and (self._dir(run_id) / WEIGHTS).exists()

    def run_ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and set(p.name) <= _RUN_ID_CHARS and (p / "meta.json").exists())

    def get(self, run_id: str, *, rows: bool = True) -> Run:
        """A stored run (KeyError naming the stored ones when there is none); ``rows=False``
        skips reading its rows (an empty frame): config, status and meta only."""
        folder = self._dir(run_id)
        if not (folder / "meta.json").exists():
            known = self.run_ids()
            raise KeyError(f"no run {run_id!r} in {self.root}; stored runs: "
                           f"{', '.join(known[:20]) or 'none'}{' ...' if len(known) > 20 else ''}")
        gone = KeyError(f"run {run_id!r} in {self.root} was removed or is being rewritten "
                        "while it was read")
        try:
            text = (folder / "meta.json").read_text()
            config = _json(folder / "config.json")
            frame = pd.read_parquet(folder / "rows.parquet") if rows else empty_frame()
            # another run saved under this id in between (its meta.json differs: start time,
            # wall time): the files read may mix the two runs. (The same run saved again
            # leaves the same meta.json and the same files.)
            if (folder / "meta.json").read_text() != text:
                raise gone
        except FileNotFoundError:  # deleted, or being overwritten (meta.json goes first)
            raise gone from None
        meta = _json(folder / "meta.json", text)
        if "converged" in frame and frame["converged"].dtype == object:
            # NaN (rows without a convergence flag) comes back from Parquet as None
            frame["converged"] = frame["converged"].where(frame["converged"].notna(), float("nan"))
        known = {"run_id", "status", "error", "diverged_step", "steps_done", "wall_time", "started_at",
                 "finals"}
        return Run(run_id=run_id, config=config, status=meta["status"], frame=frame,
                   error=meta.get("error"), diverged_step=meta.get("diverged_step"),
                   steps_done=meta.get("steps_done", 0), wall_time=meta.get("wall_time", 0.0),
                   started_at=meta.get("started_at", ""), finals=meta.get("finals"),
                   meta={k: v for k, v in meta.items() if k not in known})

    def weights(self, run_id: str, device: str = "cpu") -> dict:
        """A stored run's final ``state_dict`` (KeyError: no such run; ValueError: stored without
        weights)."""
        import torch

        if not self.has_weights(run_id):
            run = self.get(run_id, rows=False)  # the KeyError, where there is no such run
            raise ValueError(f"run {run_id!r} was stored without weights ({run.status}; runs "
                             "saved before weights were kept have none): train it again to probe it")
        return torch.load(self._dir(run_id) / WEIGHTS, map_location=device, weights_only=True)

    def restore(self, run_id: str, device: str = "cpu") -> Run:
        """A stored run with its model rebuilt from the config and its final weights loaded, and
        its dataset regenerated (``run.model``, ``run.dataset``), ready for any probe.

        The model is in train mode, as training left it; the global RNG is untouched. A KeyError
        for an unknown run, a ValueError for a run stored without weights (before they were
        kept, or one that failed before its model was built).
        """
        import torch

        from ..data import make_dataset
        from ..models import build_model
        from ..train.config import TrainConfig

        run, state = self.get(run_id), self.weights(run_id, device)
        cfg = TrainConfig.from_dict(run.config)
        dataset = make_dataset(cfg.data).to(device)
        with torch.random.fork_rng(devices=[]):  # initialization draws: overwritten below
            model = build_model(cfg.model_for(dataset))
        model.load_state_dict(state)
        run.model, run.dataset = model.to(device).train(), dataset
        return run

    def load(self, status: str | None = None) -> pd.DataFrame:
        """All stored rows in one tidy frame (optionally only runs with ``status``)."""
        if status is not None:
            from .run import STATUSES
            check_choice("status", status, STATUSES)
        frames = [run.frame for run in self.runs()
                  if (status is None or run.status == status) and len(run.frame)]
        return pd.concat(frames, ignore_index=True) if frames else empty_frame()

    def summary(self) -> pd.DataFrame:
        """One row per stored run (status, model, norm, batch size, final loss, ...).

        Reads each run's config and meta only: the final values were stored with it. A run saved
        before they were (no ``finals`` in its ``meta.json``) has its rows read."""
        out = []
        for run in self.runs(rows=False):
            if run.finals is None:
                run = next(self.runs([run.run_id]), run)
            out.append(run.summary())
        return pd.DataFrame(out)

    def runs(self, run_ids=None, *, rows: bool = True, retries: int = 5, wait: float = 0.02):
        """Every stored run in :meth:`run_ids` order, or those of ``run_ids`` that are stored
        (``rows=False``: config and meta only).

        Safe while other processes write to the store: a run being overwritten (its
        ``meta.json`` is removed first; its files changed within the last two seconds) is read
        again after ``wait`` seconds, up to ``retries`` times; a run deleted meanwhile, never
        stored, or left incomplete by a killed writer is left out at once, one with damaged
        files (not valid JSON) with a warning naming the file."""
        if run_ids is None:  # every run folder: one being overwritten has no meta.json now
            run_ids = sorted(p.name for p in self.root.iterdir()
                             if p.is_dir() and set(p.name) <= _RUN_ID_CHARS) if self.root.exists() else []
        for run_id in run_ids:
            for attempt in range(retries + 1):
                try:
                    run = self.get(run_id, rows=rows)
                except KeyError:
                    if attempt == retries or not self._being_written(run_id):  # else: no wait
                        run = None
                    else:
                        time.sleep(wait)
                        continue
                except ValueError as err:  # damaged files: the others are still listed
                    warnings.warn(f"left out: {err}", RuntimeWarning, stacklevel=2)
                    run = None
                break
            if run is not None:
                yield run

    def _being_written(self, run_id: str, within: float = 2.0) -> bool:
        """A run folder without ``meta.json`` whose files changed in the last ``within`` seconds
        (a save in progress), not one a killed writer left behind long ago."""
        try:  # the folder's own time: saving removes, creates and renames files in it
            changed = self._dir(run_id).stat().st_mtime
        except FileNotFoundError:
            return False
        return time.time() - changed < within

    def delete(self, run_id: str) -> None:
        shutil.rmtree(self._dir(run_id), ignore_errors=True)
