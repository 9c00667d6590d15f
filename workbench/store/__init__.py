"""Run store: runs as tidy Parquet frames plus JSON config/meta, written atomically."""
from .run import BUDGET_COLUMNS, COLUMNS, STATUSES, Run, canonical_json, config_hash, empty_frame
from .store import RunStore

__all__ = ["BUDGET_COLUMNS", "COLUMNS", "STATUSES", "Run", "RunStore", "canonical_json",
           "config_hash", "empty_frame"]
