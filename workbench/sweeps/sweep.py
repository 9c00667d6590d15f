"""``Sweep``: a product over config fields (dotted paths), plus explicit extra configs, times seeds.

A field is a dotted path into ``TrainConfig.to_dict()``: ``lr``, ``batch_size``, ``model.norm``,
``data.n_train``, ``model.norm_options.groups``. Every run is a ``TrainConfig``; its id is the
config hash, so the same grid always names the same runs and a rerun can skip what is stored.

    sweep = Sweep(base=TrainConfig.smoke(), grid={"batch_size": [8, 32], "model.norm": ["none", "batch"]},
                  seeds=[0, 1])
    sweep.configs()   # 8 TrainConfigs, grid order, seeds innermost
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DataConfig
from ..models import MODELS
from ..train import TrainConfig

SWEEP_KEYS = ("name", "base", "grid", "extra", "seeds", "analysis")
ANALYSIS_KEYS = ("target_loss", "target_probe", "by", "lr_by")  # read by ``python -m workbench sweep``
_DICT_FIELDS = ("model.norm_options", "data.options")  # free-form: their keys are checked by the config


def _yaml_loader():
    """``yaml.SafeLoader`` that also reads ``1e-3``, ``1.0e30`` and ``-2E+5`` as floats (YAML 1.2;
    PyYAML's YAML 1.1 rules read exponents without a dot or sign as strings). Quoted ``"1e-3"``
    stays a string. A subclass: the global loader is not touched."""
    import re

    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    # add_implicit_resolver copies the inherited table first: SafeLoader's own is unchanged
    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"""),
        list("-+0123456789."))
    return _Loader


def _field_types(cls) -> dict[str, set[str]]:
    """``{"lr": {"float"}, "micro_batch": {"int", "None"}}`` from a dataclass's annotations."""
    out = {}
    for f in dataclasses.fields(cls):
        names = {t.strip() for t in str(f.type).split("|")}
        out[f.name] = {n for n in names if n in ("int", "float", "str", "bool", "dict", "tuple", "None")}
    return out


def valid_fields(base: TrainConfig, kinds=()) -> dict[str, set[str]]:
    """Every dotted field a sweep over ``base`` may set, with the type names it accepts.

    Model fields are those of the base's model class, plus those of any ``kinds`` the sweep sets.
    """
    out = {k: v for k, v in _field_types(TrainConfig).items() if k not in ("model", "data")}
    out["model"], out["data"] = {"dict"}, {"dict"}
    out["model.kind"] = {"str"}
    for kind in {base.model.kind, *(k for k in kinds if k in MODELS)}:
        for k, v in _field_types(MODELS[kind][0]).items():
            out.setdefault(f"model.{k}", set()).update(v)
    out.update({f"data.{k}": v for k, v in _field_types(DataConfig).items()})
    return out


def _check_type(where: str, path: str, value, types: set[str]) -> None:
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "str": lambda v: isinstance(v, str), "bool": lambda v: isinstance(v, bool),
          "dict": lambda v: isinstance(v, dict), "tuple": lambda v: isinstance(v, (list, tuple)),
          "None": lambda v: v is None}
    if types and not any(ok[t](value) for t in types):
        want = " or ".join(sorted("null" if t == "None" else t for t in types))
        raise ValueError(f"{where} field {path!r} expects {want}, got {value!r} ({type(value).__name__})")


def _resolve(path: str, fields: dict[str, set[str]], where: str) -> set[str]:
    """The accepted types of ``path``; a ValueError naming it and listing valid fields if unknown."""
    if path in fields:
        return fields[path]
    if any(path.startswith(p + ".") and path.count(".") == 2 for p in _DICT_FIELDS):
        return set()  # a norm/data option: its name and value are checked when the config is built
    raise ValueError(f"unknown {where} field {path!r}; valid fields: {', '.join(sorted(fields))}")


def set_path(d: dict, path: str, value) -> dict:
    """Set a dotted path in a nested dict (in place) and return it."""
    *head, last = path.split(".")
    node = d
    for key in head:
        node = node.setdefault(key, {})
    node[last] = copy.deepcopy(value)
    return d


def _build(base: dict, changes: dict, where: str) -> TrainConfig:
    d = copy.deepcopy(base)
    for path, value in changes.items():
        set_path(d, path, value)
    if "model.kind" in changes and changes["model.kind"] != base["model"].get("kind"):
        # another model class: keep only the fields this sweep set on it
        d["model"] = {"kind": changes["model.kind"],
                      **{p[6:]: v for p, v in changes.items() if p.startswith("model.") and p != "model.kind"}}
    try:
        return TrainConfig.from_dict(d)
    except (ValueError, TypeError) as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in changes.items())
        raise ValueError(f"{where} ({shown}) is not a valid config: {exc}") from None


@dataclass(frozen=True)
class Sweep:
    """A grid of training runs.

    Attributes:
        base: the config every run starts from.
        grid: ``{dotted field: [values]}``; the runs are the product of all value lists.
        extra: more runs outside the product, each ``{dotted field: value}`` applied to ``base``
            (or a whole ``TrainConfig``).
        seeds: each grid point and extra run is trained once per seed (``TrainConfig.seed``).
        name: shown in progress and logs.
        analysis: free-form options for the analyses (``target_loss``, ``by``), kept from YAML.
    """

    base: TrainConfig = field(default_factory=TrainConfig.smoke)
    grid: dict = field(default_factory=dict)
    extra: tuple = ()
    seeds: tuple = (0,)
    name: str = "sweep"
    analysis: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.base, TrainConfig):
            raise ValueError(f"sweep base must be a TrainConfig, got {type(self.base).__name__}")
        if not isinstance(self.grid, dict):
            raise ValueError(f"sweep grid must be a mapping of field -> list of values, got {self.grid!r}")
        object.__setattr__(self, "grid", {str(k): list(v) if isinstance(v, (list, tuple)) else v
                                          for k, v in self.grid.items()})
        seeds = self.seeds if isinstance(self.seeds, (list, tuple)) else [self.seeds]
        object.__setattr__(self, "seeds", tuple(seeds))
        object.__setattr__(self, "extra", tuple(self.extra))
        if not self.seeds:
            raise ValueError("sweep field 'seeds' is empty; give at least one seed, e.g. [0]")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ValueError(f"sweep field 'seeds' expects non-negative integers, got {s!r}")
        if not self.grid and not self.extra:
            raise ValueError("sweep grid is empty: give 'grid' fields with values, or 'extra' configs")
        kinds = self.grid.get("model.kind", [])  # a swept model class brings its own fields
        kinds = [k for k in (kinds if isinstance(kinds, list) else [kinds]) if isinstance(k, str)]
        kinds += [r.get("model.kind") for r in self.extra if isinstance(r, dict)]
        fields = valid_fields(self.base, kinds)
        for path, values in self.grid.items():
            if path == "seed":
                raise ValueError("grid field 'seed': list seeds under 'seeds', not in the grid")
            types = _resolve(path, fields, "grid")
            if not isinstance(values, list):
                raise ValueError(f"grid field {path!r} expects a list of values, got {values!r}")
            if not values:
                raise ValueError(f"grid field {path!r} is empty; give at least one value")
            for v in values:
                _check_type("grid", path, v, types)
        for i, run in enumerate(self.extra):
            if isinstance(run, TrainConfig):
                continue
            if not isinstance(run, dict) or not run:
                raise ValueError(f"extra[{i}] must be a non-empty mapping of field -> value or a "
                                 f"TrainConfig, got {run!r}")
            for path, v in run.items():
                _check_type(f"extra[{i}]", path, v, _resolve(path, fields, f"extra[{i}]"))
        for key in ("by", "lr_by"):  # the analyses group by these config fields
            paths = self.analysis.get(key, [])
            if not isinstance(paths, list) or not all(isinstance(q, str) for q in paths):
                raise ValueError(f"analysis {key!r} expects a list of config fields (e.g. "
                                 f"[model.norm]), got {paths!r}")
            for path in paths:
                if path not in ("seed", "batch_size") and path not in fields:
                    _resolve(path, fields, f"analysis {key!r}")
        self.configs()  # every run must be a valid config: fail at definition, not mid-sweep

    def points(self) -> list[tuple[str, dict | TrainConfig]]:
        """``(where, changes)`` per grid point and extra run, before seeds."""
        keys = list(self.grid)
        out = [("grid point", dict(zip(keys, combo)))
               for combo in itertools.product(*(self.grid[k] for k in keys))] if keys else []
        out += [(f"extra[{i}]", run) for i, run in enumerate(self.extra)]
        return out

    def configs(self) -> list[TrainConfig]:
        """Every run, deduplicated by run id, grid order with seeds innermost."""
        base = self.base.to_dict()
        seen, out = set(), []
        for where, changes in self.points():
            cfg = changes if isinstance(changes, TrainConfig) else _build(base, changes, where)
            for seed in self.seeds:
                c = cfg.replace(seed=seed)
                if c.run_id not in seen:
                    seen.add(c.run_id)
                    out.append(c)
        return out

    def __len__(self) -> int:
        return len(self.configs())

    # -- YAML / dict ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> Sweep:
        """Build from ``{name, base, grid, extra, seeds, analysis}`` (the YAML layout)."""
        if not isinstance(d, dict):
            raise ValueError(f"a sweep file must hold a mapping with keys {', '.join(SWEEP_KEYS)}; "
                             f"got {type(d).__name__}")
        unknown = sorted(set(d) - set(SWEEP_KEYS))
        if unknown:
            raise ValueError(f"unknown sweep key(s) {', '.join(map(repr, unknown))}; "
                             f"valid keys: {', '.join(SWEEP_KEYS)}")
        base = d.get("base") or {}
        if not isinstance(base, dict):
            raise ValueError(f"sweep field 'base' expects a mapping of TrainConfig fields, got {base!r}")
        base = copy.deepcopy(base)
        if isinstance(base.get("model"), dict):
            base["model"].setdefault("kind", "mlp")
        try:
            base_cfg = TrainConfig.from_dict(base)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"sweep field 'base': {exc}") from None
        extra = d.get("extra") or []
        if not isinstance(extra, list):
            raise ValueError(f"sweep field 'extra' expects a list of {{field: value}} mappings, got {extra!r}")
        analysis = d.get("analysis") or {}
        if not isinstance(analysis, dict):
            raise ValueError(f"sweep field 'analysis' expects a mapping, got {analysis!r}")
        unknown = sorted(set(analysis) - set(ANALYSIS_KEYS))
        if unknown:
            raise ValueError(f"unknown analysis key(s) {', '.join(map(repr, unknown))}; "
                             f"valid keys: {', '.join(ANALYSIS_KEYS)}")
        name = d.get("name", "sweep")
        if not isinstance(name, str):
            raise ValueError(f"sweep field 'name' expects a string, got {name!r}")
        return cls(base=base_cfg, grid=d.get("grid") or {}, extra=tuple(extra),
                   seeds=d.get("seeds", (0,)), name=name, analysis=analysis)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Sweep:
        """Read a sweep file (see ``sweeps/critical_batch.yaml``)."""
        import yaml

        path = Path(path)
        if not path.exists():
            raise ValueError(f"no sweep file {str(path)!r}")
        try:
            d = yaml.load(path.read_text(), Loader=_yaml_loader())  # a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        try:
            return cls.from_dict(d)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
