"""A head run's directory: what ``tlkit train`` records (``config.json`` and the files beside it) so that
``tlkit predict`` can rebuild the backbone, repeat the extraction settings and check its input."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlkit.errors import BadInputError

if TYPE_CHECKING:
    from tlkit.heads.fit import Fitted
    from tlkit.heads.tables import FeatureTable
    from tlkit.runs.metrics import ClassificationReport

RUN_FILES = ("config.json", "head.safetensors", "head.skops", "metrics.jsonl", "report.json", "sweep.json")
#: The extraction settings a head run records from its training cache; ``tlkit predict`` repeats them on raw items.
EXTRACT_FIELDS = ("precision", "store_dtype", "reader", "reader_options")


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse a file, or an existing run unless ``overwrite``. The run's lock creates the folder (and removes it
    again when the run fails before writing into it: :func:`tlkit.runs.rundir.run_lock`)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise BadInputError(f"{run_dir}: exists and is not a directory; choose another {{param}}", param="output")
    if (run_dir / "config.json").exists() and not overwrite:
        raise BadInputError(
            f"{run_dir}: already holds a run; pass {{param}} to replace it, or choose another output",
            param="overwrite",
        )


def clear_run_dir(run_dir: Path) -> None:
    """Remove an earlier run's files (and their checksums), config first: a half-replaced run is never mistaken
    for a complete one."""
    from tlkit.runs.checksums import remove

    for name in RUN_FILES:
        remove(run_dir / name)


def backbone_section(cache: Any) -> dict[str, Any]:
    """Name, weights, constructor options and fingerprint of the backbone that made the cache's features."""
    info = dict(cache.backbone or {})
    options = dict(info.get("init_kwargs") or info.get("options") or {})
    options.pop("weights", None)
    return {
        "name": info.get("name"),
        "weights": info.get("weights"),
        "options": options,
        "fingerprint": cache.fingerprint,
    }


def extract_section(cache: Any) -> dict[str, Any]:
    """The extraction settings of the cache's key: ``tlkit predict`` repeats them on raw items, and checks a cache
    given as input against the recorded ``precision`` (a head trained on bf16 features sees bf16 features)."""
    key = dict(getattr(cache, "key", None) or {})
    meta = dict(cache.meta or {})
    values = {k: key.get(k, meta.get(k)) for k in EXTRACT_FIELDS}
    return {k: v for k, v in values.items() if v is not None}


def run_config(
    cache: Any,
    fitted: Fitted,
    train: FeatureTable,
    val: FeatureTable | None,
    *,
    head: dict[str, Any],
    layer: str | None,
    layer_scores: dict[str, float] | None,
    train_args: dict[str, Any],
) -> dict[str, Any]:
    """The run's ``config.json``: the backbone and extraction settings of ``cache``, the head, the classes, the
    layer, and the training arguments with their outcome."""
    from tlkit.runs.rundir import new_config

    source = train.source
    return new_config(
        "head",
        backbone=backbone_section(cache),
        head={**head, "in_dim": source.dim, "n_classes": len(source.class_names)},
        class_names=list(source.class_names),
        layer=layer,
        extract=extract_section(cache),
        train={
            **train_args,
            "n_train": len(train),
            "n_val": len(val) if val is not None else 0,
            "best_epoch": fitted.best_epoch,
            "epochs_run": fitted.epochs_run,
            "stopped_early": fitted.stopped_early,
            "best_lr": fitted.best_lr,
            "best_weight_decay": fitted.best_weight_decay,
        },
        layer_scores=layer_scores,
    )


def write_run(
    run_dir: Path, fitted: Fitted, config: dict[str, Any], report: ClassificationReport, has_val: bool
) -> None:
    """Weights, metrics, report and plots first; ``config.json`` last, so its presence marks a complete run."""
    from tlkit.runs.plots import plot_confusion, plot_curves
    from tlkit.runs.rundir import CONFIG, HEAD_WEIGHTS, METRICS, REPORT, rewrite_jsonl, save_tensors, write_json

    if config["head"]["kind"] == "estimator":
        from tlkit.heads.sklearn_head import ESTIMATOR_FILE, save_estimator

        save_estimator(fitted.head, run_dir / ESTIMATOR_FILE)
    else:
        state = dict(fitted.head.state_dict().items())
        save_tensors(run_dir / HEAD_WEIGHTS, state, metadata={"format": "tlkit-head", "head": config["head"]["name"]})
    rewrite_jsonl(run_dir / METRICS, fitted.history)
    if fitted.sweep is not None:
        write_json(run_dir / "sweep.json", [s.to_dict() for s in fitted.sweep])
    write_json(run_dir / REPORT, {**report.to_dict(), "evaluated_on": "val" if has_val else "train"})
    plot_curves(fitted.history, run_dir / "curves.png")
    plot_confusion(report.confusion, report.class_names, run_dir / "confusion.png")
    write_json(run_dir / CONFIG, config)
