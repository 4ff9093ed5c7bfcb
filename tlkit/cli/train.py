"""CLI commands for heads on cached features: ``train``, ``predict``, ``evaluate`` and ``demo``.

Only click and light tlkit modules are imported here; torch loads inside the commands.
"""

from __future__ import annotations

import pathlib
from typing import Any

import click

PATH = click.Path(path_type=pathlib.Path)
EXISTING = click.Path(exists=True, path_type=pathlib.Path)


def _floats(text: str | None, option: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"expected comma-separated numbers such as 1e-3,1e-2, not {text!r}"
        raise click.BadParameter(msg, param_hint=option) from None


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _draw_bars() -> bool:
    """Bars only on a terminal: in logs and pipes a transient bar leaves nothing useful, only blank lines."""
    return bool(_console().is_terminal)


class TrainProgress:
    """Draws :class:`tlkit.heads.training.TrainEvent` objects: a bar over epochs (or layers) with the latest scores."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet or not _draw_bars()
        self.bar: Any = None
        self.task: Any = None
        self.label = ""

    def __call__(self, ev: Any) -> None:
        if self.quiet:
            return
        if ev.kind == "layer":
            self._ensure("probing layers", ev.steps)
            self.bar.update(self.task, completed=ev.step - 1, info=ev.message)
        elif ev.kind == "epoch":
            if ev.epochs <= 1:  # a one-shot fit (k-NN, scikit-learn): no bar to draw
                return
            if self.label != "epochs":
                self.close()
            self._ensure("epochs", ev.epochs)
            m = ev.metrics
            info = ""
            if "val_accuracy" in m:
                info = f"val acc {m['val_accuracy']:.3f}"
            if "train_loss" in m:
                info = f"loss {m['train_loss']:.4f}  " + info
            if "probes" in m:
                info = f"{m['probes']} probes, best " + info
            self.bar.update(self.task, completed=ev.epoch, info=info)
        elif ev.kind == "fit":
            self.close()
            click.echo(ev.message or "fitting", err=True)
        elif ev.kind == "done":
            self.close()

    def _ensure(self, label: str, total: int) -> None:
        if self.bar is not None and self.label == label:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.close()
        self.label = label
        self.bar = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=_console(),
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task(label, total=total, info="")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            self.label = ""


class ExtractProgress:
    """Draws the extraction engine's :class:`tlkit.runtime.progress.ProgressEvent` objects as one bar with items/s."""

    def __init__(self, quiet: bool, title: str = "extract") -> None:
        self.quiet = quiet or not _draw_bars()
        self.title = title
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, ev: Any) -> None:
        if self.quiet or getattr(ev, "stage", None) != "extract":
            if getattr(ev, "stage", None) == "done":
                self.close()
            return
        if self.bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn(self.title),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} items/s"),
                TimeRemainingColumn(),
                console=_console(),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.title, total=max(ev.total, 1), rate="-")
        self.bar.update(self.task, completed=ev.done, total=max(ev.total, 1), rate=f"{ev.rate:.1f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def print_sweep(scores: list[Any], best_lr: float, best_wd: float) -> None:
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
            row.append(f"{s.val_accuracy:.4f}{mark}" if s else "")
        rows.append(row)
    print_table(["lr \\ wd", *[f"{wd:g}" for wd in wds]], rows, title="sweep: best validation accuracy")


def print_run_files(run_dir: pathlib.Path) -> None:
    names = [p.name for p in sorted(run_dir.iterdir()) if not p.name.startswith(".")]
    click.echo(f"run: {run_dir}  ({', '.join(names)})")


@click.command("train")
@click.argument("cache", type=EXISTING)
@click.option("-o", "--output", type=PATH, required=True, help="Run directory to write.")
@click.option("--val", type=EXISTING, help="Validation cache (same backbone and classes). Default: --val-split 0.2.")
@click.option(
    "--val-split", type=float, default=None, help="Stratified share of CACHE held out for validation (0: none)."
)
@click.option(
    "--head", default=None, help="Head type: linear, mlp (default), knn, sklearn, sklearn:ALIAS, or a plugin's."
)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Head parameter (repeatable).")
@click.option("--epochs", type=int, default=30, show_default=True, help="Training epochs (torch heads).")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW learning rate.")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True, help="AdamW weight decay.")
@click.option("--batch-size", type=int, default=None, help="Batch size. Default: an eighth of the rows, 32 to 1024.")
@click.option("--layer", help="A cached layer to train on, or 'auto' to probe every cached layer and keep the best.")
@click.option("--views", is_flag=True, help="Sample one cached augmented view per item per epoch.")
@click.option("--class-weight", type=click.Choice(["balanced"]), help="Weigh the loss by inverse class frequency.")
@click.option("--early-stopping", type=int, metavar="N", help="Stop after N epochs without a better validation score.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: same seed, same result.")
@click.option("--sweep", is_flag=True, help="Train a grid of linear probes (lr x weight decay) at once; keep the best.")
@click.option("--sweep-lr", metavar="LR,...", help="Learning rates of the sweep grid.")
@click.option("--sweep-wd", metavar="WD,...", help="Weight decays of the sweep grid.")
@click.option(
    "--standardize/--no-standardize",
    default=True,
    show_default=True,
    help="Train linear/MLP heads on standardised features (folded into the saved head).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train_cmd(
    cache: pathlib.Path,
    output: pathlib.Path,
    val: pathlib.Path | None,
    val_split: float | None,
    head: str | None,
    params: tuple[str, ...],
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int | None,
    layer: str | None,
    views: bool,
    class_weight: str | None,
    early_stopping: int | None,
    seed: int,
    sweep: bool,
    sweep_lr: str | None,
    sweep_wd: str | None,
    standardize: bool,
    device: str,
    overwrite: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Train a head on cached features (from tlkit extract) and write a run directory.

    The run holds the head (head.safetensors, or head.skops for scikit-learn), config.json (with the backbone's
    fingerprint), metrics.jsonl, report.json, curves.png and confusion.png.

    \b
    Examples:
      tlkit train feats.h5 -o run                          # MLP head, 20% held out
      tlkit train feats.h5 -o run --sweep                  # grid of linear probes
      tlkit train feats.h5 -o run --head sklearn:logreg --param C=0.5
      tlkit train feats.h5 -o run --layer auto --val val.h5
    """
    from tlkit.heads.torch_heads import parse_params
    from tlkit.heads.training import train_head

    head_params = parse_params(params)
    progress = TrainProgress(quiet or as_json)
    try:
        result = train_head(
            cache,
            output,
            val=val,
            val_split=val_split,
            head=head,
            head_params=head_params,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            layer=layer,
            views=views,
            class_weight=class_weight,
            early_stopping=early_stopping,
            seed=seed,
            sweep=sweep,
            sweep_lrs=_floats(sweep_lr, "--sweep-lr"),
            sweep_wds=_floats(sweep_wd, "--sweep-wd"),
            standardize=standardize,
            device=device,
            overwrite=overwrite,
            progress=progress,
        )
    finally:
        progress.close()
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
                "seconds": result.seconds,
            }
        )
        return
    if result.layer_scores:
        from tlkit.cli.group import print_table

        rows = [[name, f"{acc:.4f}" + (" *" if name == (result.layer or "features") else "")] for name, acc in
                result.layer_scores.items()]  # fmt: skip
        print_table(["layer", "probe val accuracy"], rows, title="layers")
    if result.sweep:
        print_sweep(result.sweep, result.best_lr, result.best_weight_decay)
    click.echo(result.summary())
    print_run_files(result.run_dir)


@click.command("predict")
@click.argument("run_dir", type=EXISTING)
@click.argument("input", type=EXISTING)
@click.option("-o", "--output", type=PATH, required=True, help="CSV file to write (id, predicted, top-k).")
@click.option("--top-k", type=int, default=3, show_default=True, help="Classes with probabilities per item.")
@click.option("--batch-size", default=None, help="Batch size for extraction / forward passes on raw items.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--workers", type=int, default=None, help="Data-loading worker processes for raw items.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def predict_cmd(
    run_dir: pathlib.Path,
    input: pathlib.Path,
    output: pathlib.Path,
    top_k: int,
    batch_size: str | None,
    device: str,
    workers: int | None,
    quiet: bool,
) -> None:
    """Predict classes for raw items or a feature cache with a trained run (tlkit train or tlkit finetune).

    Raw items are extracted with the run's backbone first; a cache must come from the same backbone (its
    fingerprint is checked).
    """
    from tlkit.runs.inference import predict

    if top_k < 1:
        raise click.BadParameter("must be at least 1", param_hint="--top-k")
    progress = ExtractProgress(quiet)
    try:
        preds = predict(
            run_dir,
            input,
            output=output,
            top_k=top_k,
            batch_size=_batch(batch_size),
            device=device,
            workers=workers,
            progress=progress,
        )
    finally:
        progress.close()
    counts: dict[str, int] = {}
    for name in preds.predicted_names:
        counts[name] = counts.get(name, 0) + 1
    spread = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:5])
    skipped = f" ({len(preds.skipped)} skipped)" if preds.skipped else ""
    click.echo(f"{len(preds)} predictions{skipped} -> {output}  [{spread}]")


def _batch(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"expected a number or auto, not {value!r}", param_hint="--batch-size") from None


@click.command("evaluate")
@click.argument("run_dir", type=EXISTING)
@click.argument("input", type=EXISTING)
@click.option("-o", "--output-dir", type=PATH, help="Where to write report.json, predictions.csv, confusion.png.")
@click.option("--batch-size", default=None, help="Batch size for extraction / forward passes on raw items.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--workers", type=int, default=None, help="Data-loading worker processes for raw items.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def evaluate_cmd(
    run_dir: pathlib.Path,
    input: pathlib.Path,
    output_dir: pathlib.Path | None,
    batch_size: str | None,
    device: str,
    workers: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Metrics and plots of a trained run on a labelled set (raw items, or a cache for head runs).

    Writes report.json, predictions.csv and confusion.png to --output-dir (default RUN_DIR/eval-<input name>).
    """
    from tlkit.runs.inference import evaluate

    out = output_dir or run_dir / f"eval-{input.stem or input.name}"
    progress = ExtractProgress(quiet or as_json)
    try:
        result = evaluate(
            run_dir, input, output_dir=out, batch_size=_batch(batch_size), device=device, workers=workers,
            progress=progress,
        )  # fmt: skip
    finally:
        progress.close()
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
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def demo_cmd(output: pathlib.Path, backbone: str | None, device: str, quiet: bool) -> None:
    """Run the whole feature-extraction job on a small Fashion-MNIST sample that ships with tlkit, offline.

    Extracts features with EfficientNet-Lite0's ImageNet weights, trains a grid of linear probes on them, evaluates
    the best on held-out images, and says where the run and its plots are.
    """
    from tlkit.demo import DEMO_BACKBONE, run_demo

    state: dict[str, Any] = {}

    def extract_progress(title: str) -> ExtractProgress:
        state["bar"] = ExtractProgress(quiet, title)
        return state["bar"]

    train_progress = TrainProgress(quiet)
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
        train_progress.close()
        if "bar" in state:
            state["bar"].close()
    click.echo(result.summary())


def register(cli: click.Group) -> None:
    for command in (train_cmd, predict_cmd, evaluate_cmd, demo_cmd):
        cli.add_command(command)
