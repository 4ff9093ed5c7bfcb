"""CLI commands for heads on cached features: ``train``, ``predict``, ``evaluate`` and ``demo``.

Only click and light tlkit modules are imported here; torch loads inside the commands.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tlkit.cli.group import ProgressBar, draw_bars
from tlkit.cli.options import CHECK, preprocess_options
from tlkit.runtime.policy import PRECISIONS, option_help

PATH = click.Path(path_type=pathlib.Path)
EXISTING = click.Path(exists=True, path_type=pathlib.Path)
_F = TypeVar("_F", bound=Callable[..., Any])


def _floats(text: str | None, option: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"expected comma-separated numbers such as 1e-3,1e-2, not {text!r}"
        raise click.BadParameter(msg, param_hint=option) from None


class TrainProgress:
    """Draws :class:`tlkit.heads.TrainEvent` objects: a bar over epochs (or layers) with the latest scores."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet or not draw_bars()
        self.bar: ProgressBar | None = None
        self.label = ""

    def __call__(self, ev: Any) -> None:
        if self.quiet:
            return
        if ev.kind in ("layer", "cv"):
            label = "probing layers" if ev.kind == "layer" else "cross-validating"
            self._bar(label, ev.steps).update(ev.step - (ev.kind == "layer"), ev.message)
        elif ev.kind == "epoch":
            if ev.epochs <= 1:  # a one-shot fit (k-NN, scikit-learn): no bar to draw
                return
            m = ev.metrics
            info = ""
            if "val_accuracy" in m:
                info = f"val acc {m['val_accuracy']:.3f}"
            if "train_loss" in m:
                info = f"loss {m['train_loss']:.4f}  " + info
            if "probes" in m:
                info = f"{m['probes']} probes, best " + info
            self._bar("epochs", ev.epochs).update(ev.epoch, info)
        elif ev.kind == "fit":
            self.close()
            click.echo(ev.message or "fitting", err=True)
        elif ev.kind == "done":
            self.close()

    def _bar(self, label: str, total: int) -> ProgressBar:
        if self.bar is None or self.label != label:
            self.close()
            self.label, self.bar = label, ProgressBar(label, total)
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.label = None, ""


class ExtractProgress:
    """Draws :class:`tlkit.runtime.progress.ProgressEvent` objects as one bar per stage with its rate and the time
    remaining: the extraction engine's ``extract`` stage by default; ``stages`` maps other stages to their titles
    (``{"features": "probe features", "lr-find": "lr-find"}``). The event's ``message`` follows the rate."""

    UNITS = {"lr-find": "steps"}

    def __init__(self, quiet: bool, title: str = "extract", stages: dict[str, str] | None = None) -> None:
        self.quiet = quiet or not draw_bars()
        self.titles = stages or {"extract": title}
        self.bar: ProgressBar | None = None
        self.stage = ""

    def __call__(self, ev: Any) -> None:
        stage = getattr(ev, "stage", None)
        if stage == "done" or (self.bar is not None and stage in self.titles and stage != self.stage):
            self.close()
        if self.quiet or stage not in self.titles:
            return
        unit = self.UNITS.get(stage, "items")
        if self.bar is None:
            self.stage = stage
            self.bar = ProgressBar(self.titles[stage], max(ev.total, 1), info=f"- {unit}/s", remaining=True)
        rate = f"{ev.rate:.1f} {unit}/s" if ev.done else f"- {unit}/s"
        self.bar.update(ev.done, f"{rate}  {ev.message}" if ev.message else rate, total=max(ev.total, 1))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def print_sweep(scores: list[Any], best_lr: float | None, best_wd: float | None) -> None:
    """The sweep grid as a table: learning rates down, weight decays across, best validation accuracy in cells."""
    from tlkit.cli.group import print_table

    lrs = sorted({s.lr for s in scores})
    wds = sorted({s.weight_decay for s in scores})
    cell = {(s.lr, s.weight_decay): s for s in scores}
    rows = []
    for lr in lrs:
        row: list[Any] = [f"{lr:g}"]
        for wd in wds:
            s = cell.get((lr, wd))
            mark = " *" if (lr, wd) == (best_lr, best_wd) else ""
            std = f" ± {s.val_accuracy_std:.3f}" if s and s.val_accuracy_std is not None else ""
            row.append(f"{s.val_accuracy:.4f}{std}{mark}" if s else "")
        rows.append(row)
    cv = any(s.val_accuracy_std is not None for s in scores)
    title = "sweep: best mean accuracy over the CV folds" if cv else "sweep: best validation accuracy"
    print_table(["lr \\ wd", *[f"{wd:g}" for wd in wds]], rows, title=title)


def _mean_std(score: dict[str, Any]) -> str:
    std = score.get("accuracy_std")
    return f"{score['accuracy']:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def print_candidates(candidates: list[dict[str, Any]], selection: dict[str, Any]) -> None:
    """The ``auto`` head's regularisation path: each L2 strength with its cross-validated accuracy and loss."""
    from tlkit.cli.group import print_table

    chosen = (selection.get("chosen") or {}).get("lambda")
    rows = [
        [f"{c['lambda']:.0e}" + (" *" if c["lambda"] == chosen else ""),
         _mean_std({"accuracy": c["cv_accuracy"], "accuracy_std": c["cv_accuracy_std"]}), f"{c['cv_loss']:.4f}"]
        for c in candidates
    ]  # fmt: skip
    title = f"auto: {selection.get('folds')}-fold cross-validation"
    print_table(["L2 strength", "CV accuracy", "CV loss"], rows, title=title)


def print_run_files(run_dir: pathlib.Path) -> None:
    names = [p.name for p in sorted(run_dir.iterdir()) if not p.name.startswith(".")]
    click.echo(f"run: {run_dir}  ({', '.join(names)})")


def raw_item_options(stage: str) -> Callable[[_F], _F]:
    """``--batch-size``, ``--device``, ``--precision`` and ``--workers`` of a command that runs a backbone over raw
    items, their help from the runtime policy table. Values pass through raw (``auto`` when absent); the library
    resolves them."""

    def add(command: _F) -> _F:
        command = click.option("--workers", default=None, help=option_help("workers", stage))(command)
        command = click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default="auto",
            show_default=True,
            help=option_help("precision", stage) + " A head run always uses its training features' precision.",
        )(command)
        command = click.option("--device", default="auto", show_default=True, help=option_help("device", stage))(
            command
        )
        return click.option("--batch-size", default=None, help=option_help("batch_size", stage))(command)

    return add


#: ``--allow-estimator``, on train, predict and evaluate (docs/security.md).
allow_estimator_option = click.option(
    "--allow-estimator",
    "allow_estimators",
    multiple=True,
    metavar="PATH",
    help="Trust this estimator class outside scikit-learn (e.g. xgboost.XGBClassifier) for sklearn heads "
    "(repeatable; also TLKIT_ALLOW_ESTIMATORS).",
)


@click.command("train")
@click.argument("cache", type=PATH)  # not EXISTING: the library says why a cache is absent (being written, interrupted)
@click.option("-o", "--output", type=PATH, required=True, help="Run directory to write.")
@click.option(
    "--val",
    type=PATH,
    help="Validation cache (same backbone and classes); --sweep and --layer auto then choose on it. Default: "
    "the auto head and --sweep cross-validate on CACHE, other heads hold out --val-split 0.2.",
)
@click.option(
    "--val-split", type=float, default=None, help="Stratified share of CACHE held out for validation (0: none)."
)
@click.option(
    "--head",
    default=None,
    help="Head type: auto (default: logistic regression, L2 strength by k-fold CV), linear, mlp, knn, sklearn, "
    "sklearn:ALIAS, or a plugin's.",
)
@click.option("--param", "head_params", multiple=True, metavar="KEY=VALUE", help="Head parameter (repeatable).")
@click.option("--epochs", type=int, default=30, show_default=True, help="Training epochs (torch heads).")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW learning rate.")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True, help="AdamW weight decay.")
@click.option("--batch-size", type=int, default=None, help="Batch size. Default: an eighth of the rows, 32 to 1024.")
@click.option(
    "--layer",
    help="A cached layer to train on, or 'auto' to probe every cached layer and keep the best (by k-fold CV).",
)
@click.option("--views", is_flag=True, help="Sample one cached augmented view per item per epoch.")
@click.option("--class-weight", type=click.Choice(["balanced"]), help="Weigh the loss by inverse class frequency.")
@click.option("--early-stopping", type=int, metavar="N", help="Stop after N epochs without a better validation score.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: same seed, same result.")
@click.option(
    "--sweep",
    is_flag=True,
    help="Train a grid of linear probes (lr x weight decay) at once; keep the best by k-fold CV.",
)
@click.option(
    "--folds", type=int, default=5, show_default=True, help="Cross-validation folds (auto head, --sweep, --layer auto)."
)
@click.option("--sweep-lr", "sweep_lrs", metavar="LR,...", help="Learning rates of the sweep grid.")
@click.option("--sweep-wd", "sweep_wds", metavar="WD,...", help="Weight decays of the sweep grid.")
@click.option(
    "--standardize/--no-standardize",
    default=True,
    show_default=True,
    help="Train linear/MLP heads on standardised features (folded into the saved head).",
)
@click.option("--device", default="auto", show_default=True, help=option_help("device", "train"))
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@allow_estimator_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train_cmd(
    cache: pathlib.Path,
    head_params: tuple[str, ...],
    sweep_lrs: str | None,
    sweep_wds: str | None,
    quiet: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Train a head on cached features (from tlkit extract) and write a run directory.

    The run holds the head (head.safetensors, or head.skops for scikit-learn), config.json (with the backbone's
    fingerprint), metrics.jsonl, report.json, curves.png and confusion.png.

    \b
    Examples:
      tlkit train feats.h5 -o run                          # logistic regression, L2 by 5-fold CV
      tlkit train feats.h5 -o run --head mlp               # MLP head, 20% held out
      tlkit train feats.h5 -o run --sweep                  # grid of linear probes, chosen by CV
      tlkit train feats.h5 -o run --head sklearn:logreg --param C=0.5
      tlkit train feats.h5 -o run --layer auto --val val.h5
    """
    from tlkit.heads import parse_params, train_head

    with contextlib.closing(TrainProgress(quiet or as_json)) as progress:
        result = train_head(
            cache, head_params=parse_params(head_params), sweep_lrs=_floats(sweep_lrs, "--sweep-lr"),
            sweep_wds=_floats(sweep_wds, "--sweep-wd"), progress=progress, **options,
        )  # fmt: skip
    if as_json:
        from tlkit.cli.group import echo_json

        echo_json(
            {
                "run_dir": str(result.run_dir),
                "head": result.head,
                "layer": result.layer,
                "evaluated_on": result.evaluated_on,
                "report": result.report.to_dict(),
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "sweep": [s.to_dict() for s in result.sweep] if result.sweep else None,
                "layer_scores": result.layer_scores,
                "selection": result.selection,
                "seconds": result.seconds,
            }
        )
        return
    if result.layer_scores:
        from tlkit.cli.group import print_table

        layers = (result.selection or {}).get("layers") or {}
        rows = [[name, _mean_std(layers.get(name, {"accuracy": acc})) + (" *" if name == (result.layer or "features")
                 else "")] for name, acc in result.layer_scores.items()]  # fmt: skip
        on = {score.get("on") for score in layers.values()}
        print_table(["layer", "probe accuracy " + ("(CV)" if on == {"cv"} else "(val)")], rows, title="layers")
    candidates = (result.selection or {}).get("candidates")
    if candidates:
        print_candidates(candidates, result.selection or {})
    if result.sweep:
        print_sweep(result.sweep, result.best_lr, result.best_weight_decay)
    click.echo(result.summary())
    print_run_files(result.run_dir)


@click.command("predict")
@click.argument("run_dir", type=EXISTING)
@click.argument("input", type=EXISTING)
@click.option("-o", "--output", type=PATH, required=True, help="CSV file to write (id, predicted, top-k).")
@click.option("--top-k", type=int, default=3, show_default=True, help="Classes with probabilities per item.")
@raw_item_options("predict")
@preprocess_options(CHECK)
@allow_estimator_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def predict_cmd(
    run_dir: pathlib.Path,
    input: pathlib.Path,
    output: pathlib.Path,
    top_k: int,
    quiet: bool,
    allow_estimators: tuple[str, ...],
    preprocess: dict[str, Any],
    **runtime: Any,
) -> None:
    """Predict classes for raw items or a feature cache with a trained run (tlkit train or tlkit finetune).

    Raw items are extracted with the run's backbone first, with the preprocessing the run recorded (the
    preprocessing options only check it); a cache must come from the same backbone (its fingerprint is checked).
    """
    from tlkit.heads.sklearn_head import allowing
    from tlkit.inference.prediction import predict

    if top_k < 1:
        raise click.BadParameter("must be at least 1", param_hint="--top-k")
    with contextlib.closing(ExtractProgress(quiet)) as progress, allowing(allow_estimators):
        preds = predict(run_dir, input, output=output, top_k=top_k, progress=progress, preprocess=preprocess, **runtime)
    counts: dict[str, int] = {}
    for name in preds.predicted_names:
        counts[name] = counts.get(name, 0) + 1
    spread = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:5])
    skipped = f" ({len(preds.skipped)} skipped)" if preds.skipped else ""
    echo_skipped(preds.skipped, output)
    click.echo(f"{len(preds)} predictions{skipped} -> {output}  [{spread}]")


def echo_skipped(skipped: list[tuple[str, str]], output: pathlib.Path) -> None:
    """The first skipped items on stderr, and where the listing beside ``output`` names them all."""
    if not skipped:
        return
    from tlkit.data.ids import display_id
    from tlkit.inference.results import skipped_path

    for item_id, reason in skipped[:5]:
        click.echo(f"skipped {display_id(item_id)}: {reason}", err=True)
    more = f"{len(skipped) - 5} more; " if len(skipped) > 5 else ""
    click.echo(f"... {more}all skipped items are listed in {skipped_path(output)}", err=True)


@click.command("evaluate")
@click.argument("run_dir", type=EXISTING)
@click.argument("input", type=EXISTING)
@click.option("-o", "--output-dir", type=PATH, help="Where to write report.json, predictions.csv, confusion.png.")
@raw_item_options("predict")
@preprocess_options(CHECK)
@allow_estimator_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def evaluate_cmd(
    run_dir: pathlib.Path,
    input: pathlib.Path,
    output_dir: pathlib.Path | None,
    as_json: bool,
    quiet: bool,
    allow_estimators: tuple[str, ...],
    preprocess: dict[str, Any],
    **runtime: Any,
) -> None:
    """Metrics and plots of a trained run on a labelled set (raw items, or a cache for head runs), with the
    preprocessing the run recorded.

    Writes report.json, predictions.csv and confusion.png to --output-dir (default RUN_DIR/eval-<input name>).
    """
    from tlkit.heads.sklearn_head import allowing
    from tlkit.inference.prediction import evaluate

    out = output_dir or run_dir / f"eval-{input.stem or input.name}"
    with contextlib.closing(ExtractProgress(quiet or as_json)) as progress, allowing(allow_estimators):
        result = evaluate(run_dir, input, output_dir=out, progress=progress, preprocess=preprocess, **runtime)
    echo_skipped(list(result.predictions.skipped), out / "predictions.csv")
    if as_json:
        from tlkit.cli.group import echo_json

        echo_json({**result.report.to_dict(), "output_dir": str(out), "skipped": len(result.predictions.skipped)})
        return
    from tlkit.cli.group import print_table

    rows = [
        [c.name, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", c.support] for c in result.report.per_class
    ]
    print_table(["class", "precision", "recall", "f1", "support"], rows)
    click.echo(result.summary())
    click.echo(f"report: {out / 'report.json'}  confusion matrix: {out / 'confusion.png'}")


@click.command("demo")
@click.option("-o", "--output", type=PATH, default=pathlib.Path("tlkit-demo"), show_default=True, help="Folder.")
@click.option("--backbone", default=None, help="Backbone to use (default: effnet/lite0, the example plugin).")
@click.option("--device", default="auto", show_default=True, help=option_help("device", "extract"))
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def demo_cmd(output: pathlib.Path, backbone: str | None, device: str, quiet: bool) -> None:
    """Run the whole feature-extraction job on a small Fashion-MNIST sample that ships with tlkit, offline.

    Extracts features with EfficientNet-Lite0's ImageNet weights, trains the default head on the train split (its
    L2 strength chosen by 5-fold cross-validation there), prints its accuracy on a test split that chose nothing,
    each figure labelled with its split, and says where the run and its plots are.
    """
    from tlkit.demo import DEMO_BACKBONE, run_demo

    train_progress = TrainProgress(quiet)
    bars: list[TrainProgress | ExtractProgress] = [train_progress]

    def extract_progress(title: str) -> ExtractProgress:
        bar = ExtractProgress(quiet, title)
        bars.append(bar)
        return bar

    try:
        result = run_demo(
            output,
            backbone=backbone or DEMO_BACKBONE,
            device=device,
            extract_progress=extract_progress,
            train_progress=train_progress,
            log=None if quiet else (lambda msg: click.echo(msg, err=True)),
        )
    finally:
        for bar in bars:
            bar.close()
    click.echo(result.summary())


def register(cli: click.Group) -> None:
    for command in (train_cmd, predict_cmd, evaluate_cmd, demo_cmd):
        cli.add_command(command)
