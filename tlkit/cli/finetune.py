"""CLI commands for fine-tuning: ``finetune``, ``lr-find``, ``advise`` and ``export``.

Only click and light tlkit modules are imported here; torch loads inside the commands.
"""

from __future__ import annotations

import pathlib
import shlex
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tlkit.cli.group import ProgressBar, draw_bars
from tlkit.cli.options import preprocess_options
from tlkit.runtime.policy import PRECISIONS, option_help

PATH = click.Path(path_type=pathlib.Path)
EXISTING = click.Path(exists=True, path_type=pathlib.Path)
_F = TypeVar("_F", bound=Callable[..., Any])
#: The ``--adapter`` specs, in the help of ``finetune`` and ``lr-find`` (which train the same parameters).
ADAPTER_SPECS = "lora[:r=8,alpha=16,dropout=0.05,targets=GLOB+GLOB], ia3, loha, lokr (needs peft: pip install peft)"


def auto_or_count(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """``--workers auto`` (or no flag) is ``None``, for the runtime policy to decide; else a whole number ≥ 0."""
    if value is None or value.strip().lower() == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not auto or a whole number") from None


def precision_option(stage: str) -> Callable[[_F], _F]:
    """The ``--precision`` option of a command running ``stage``, its help from the runtime policy table."""
    return click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default="auto",
        show_default=True,
        help=option_help("precision", stage),
    )


def workers_option(stage: str) -> Callable[[_F], _F]:
    """The ``--workers`` option of a command running ``stage``, its help from the runtime policy table."""
    return click.option(
        "--workers", default="auto", show_default=True, callback=auto_or_count, help=option_help("workers", stage)
    )


def _json(data: Any) -> None:
    from tlkit.cli.group import echo_json

    echo_json(data)


def render_freeze(rows: list[Any], title: str, err: bool = False) -> None:
    """The freeze report as a table, on stdout (``tlkit blocks``) or stderr (with the training progress)."""
    from rich.console import Console
    from rich.table import Table

    from tlkit.finetuning.freeze import format_report_rows

    columns, cells = format_report_rows(rows)
    table = Table(title=title, header_style="bold")
    for col in columns:
        table.add_column(col, justify="right" if col in ("params", "lr") else "left")
    for row in cells:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row))
    Console(stderr=err, soft_wrap=True).print(table)


def show_freeze_preview(backbone: Any, unfreeze: str, as_json: bool = False, adapter: str | None = None) -> None:
    """``tlkit blocks NAME --unfreeze SPEC [--adapter SPEC]``: the freeze report with default rates and BatchNorm
    policy (with ``--adapter``, the adapter parameters each block trains)."""
    from tlkit.finetuning.freeze import freeze_preview

    rows = freeze_preview(backbone, unfreeze, adapter=adapter)
    if as_json:
        _json([r.to_dict() for r in rows])
        return
    n = sum(r.trainable for r in rows)
    if adapter:
        trainable = sum(r.adapter_params or 0 for r in rows if r.trainable)
        base = sum(r.params for r in rows)
        what = f"{trainable:,} adapter params train ({100 * trainable / max(base, 1):.2f} % of {base:,})"
        title = f"{backbone.name} --unfreeze {unfreeze} --adapter {adapter}: {n}/{len(rows)} blocks, {what}"
        render_freeze(rows, title)
        return
    trainable = sum(r.params for r in rows if r.trainable)
    render_freeze(
        rows, f"{backbone.name} --unfreeze {unfreeze}: {n}/{len(rows)} blocks, {trainable:,} backbone params train"
    )


def _reader_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    from tlkit.heads.torch_heads import parse_params

    return parse_params(pairs) if pairs else {}


class _Progress:
    """Draws the engine's events: the freeze report, a bar per epoch, and one summary line per epoch."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bars = not quiet and draw_bars()  # the lines go to stderr anyway; the bars only on a terminal
        self.bar: ProgressBar | None = None

    def __call__(self, ev: Any) -> None:
        if self.quiet:
            return
        if ev.kind == "probe":
            if self.bar is None and self.bars:
                self.bar = ProgressBar("linear probe: frozen features", max(ev.steps, 1), remaining=True)
            if self.bar is not None:
                self.bar.update(ev.step, f"{ev.items_per_s or 0:.1f} items/s")
        elif ev.kind == "start":
            self._close()
            if ev.message:
                click.echo(ev.message, err=True)
            render_freeze(ev.freeze, f"freeze plan: {ev.plan} ({ev.epochs} epochs)", err=True)
            if ev.epoch:
                click.echo(f"resuming after epoch {ev.epoch}", err=True)
        elif ev.kind == "phase":
            what = ", ".join(ev.trainable) if ev.trainable else "head only (backbone frozen)"
            click.echo(f"phase {ev.phase + 1} from epoch {ev.epoch}: training {what}", err=True)
        elif ev.kind == "epoch_start":
            self._open(ev)
        elif ev.kind == "step" and self.bar is not None:
            loss = "-" if ev.loss is None else f"{ev.loss:.4f}"
            acc = "-" if ev.accuracy is None else f"{ev.accuracy:.3f}"
            ips = "-" if ev.items_per_s is None else f"{ev.items_per_s:.1f}"
            self.bar.update(ev.step, f"loss {loss}  acc {acc}  {ips} items/s")
        elif ev.kind == "epoch_end":
            self._close()
            m = ev.metrics
            line = f"epoch {ev.epoch}/{ev.epochs}  train loss {m['train_loss']:.4f} acc {m['train_accuracy']:.3f}"
            if "val_loss" in m:
                line += f"  val loss {m['val_loss']:.4f} acc {m['val_accuracy']:.3f}"
            line += f"  {m['items_per_s']:.1f} items/s"
            click.echo(line, err=True)

    def _open(self, ev: Any) -> None:
        if self.bars:
            self.bar = ProgressBar(
                f"epoch {ev.epoch}/{ev.epochs}", ev.steps, info="loss -  acc -  - items/s", remaining=True
            )

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@click.command("finetune")
@click.argument("backbone")
@click.argument("train", type=EXISTING)
@click.option("-o", "--output", type=PATH, required=True, help="Run directory to write (or to --resume).")
@click.option("--val", type=EXISTING, help="Validation data (same classes). Default: hold out --val-split.")
@click.option("--val-split", type=float, help="Fraction of TRAIN held out for validation (default 0.1; 0 = none).")
@click.option("--weights", help="pretrained (default), none, or a local weights file/directory.")
@preprocess_options()
@click.option("--head", help="Head type (default linear, from a probe; with --init-head, the probe's).")
@click.option("--head-param", "head_params", multiple=True, metavar="KEY=VALUE", help="Head parameter (repeatable).")
@click.option(
    "--unfreeze", metavar="SPEC", help="Blocks to train: all (default), none, last:N, from:NAME, names/globs."
)
@click.option(
    "--adapter",
    metavar="SPEC",
    help=f"Train peft adapters in the blocks --unfreeze/--schedule name, base weights frozen: {ADAPTER_SPECS}.",
)
@click.option("--schedule", metavar="PHASES", help='Explicit phases, e.g. "head:2,last:1:2,last:3:4".')
@click.option("--gradual", is_flag=True, help="Unfreeze one more block (top-down) every --gradual-every epochs.")
@click.option("--gradual-every", type=int, default=1, show_default=True, help="Epochs between unfreezing steps.")
@click.option("--head-epochs", type=int, help="Head-only epochs first (default 0 from a probe, else 1).")
@click.option("--epochs", type=int, help="Total epochs (default 10, text 3; a --schedule sets its own).")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Head learning rate.")
@click.option("--backbone-lr-ratio", type=float, help="Backbone rate = --lr × this (default 0.1).")
@click.option("--backbone-lr", type=float, help="Absolute backbone rate (instead of the ratio).")
@click.option("--layer-decay", type=float, help="Each block below the top gets this factor once more, e.g. 0.75.")
@click.option("--weight-decay", type=float, default=0.01, show_default=True, help="Not applied to norms and biases.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option(
    "--lr-schedule", type=click.Choice(["cosine", "onecycle", "constant"]), default="cosine", show_default=True
)
@click.option("--warmup", type=float, default=0.1, show_default=True, help="Warm-up fraction of each phase.")
@click.option(
    "--batch-size", type=int, default=32, show_default=True, help="Training batch (under torchrun: the global batch)."
)
@click.option("--accumulate", type=int, default=1, show_default=True, help="Gradient accumulation steps.")
@precision_option("finetune")
@click.option(
    "--augment",
    help="Image training augmentation: light (crop 0.7-1 and flip, the default), strong (light + RandAugment + "
    "random erasing), default, none, randaugment, trivialaugment, ... or a plugin policy.",
)
@click.option("--bn-policy", type=click.Choice(["frozen", "affine", "train"]), default="affine", show_default=True)
@click.option("--init-head", type=EXISTING, help="Start from a head run of tlkit train (LP-FT).")
@click.option(
    "--linear-probe/--no-linear-probe",
    default=None,
    help="Fit a linear probe on frozen features first and start the head from it (LP-FT). Default: on unless "
    "--head or --init-head is given.",
)
@click.option(
    "--probe-loss-floor",
    type=float,
    default=0.25,
    show_default=True,
    metavar="F",
    help="The least training loss the linear probe leaves for fine-tuning, as a fraction of chance (ln K): a probe "
    "fitted below it has its logits divided by a temperature (same predictions), so the features still adapt. 0 = "
    "start from the probe as fitted.",
)
@click.option(
    "--ema",
    type=float,
    metavar="DECAY",
    help="Keep an exponential moving average of the weights with this decay per optimizer step (e.g. 0.99): it is "
    "what each epoch validates and what the run keeps. Off by default.",
)
@click.option("--early-stopping", type=int, metavar="N", help="Stop after N epochs without improvement.")
@click.option("--monitor", type=click.Choice(["val_accuracy", "val_loss"]), default="val_accuracy", show_default=True)
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Max gradient norm (0 = off).")
@click.option("--grad-checkpointing", is_flag=True, help="Trade compute for memory where the backbone supports it.")
@click.option("--label-smoothing", type=float, default=0.0, show_default=True)
@click.option("--mixup", type=float, default=0.0, show_default=True, help="Mixup Beta(α, α) on image batches; 0 = off.")
@click.option(
    "--cutmix", type=float, default=0.0, show_default=True, help="CutMix Beta(α, α) on image batches; 0 = off."
)
@click.option("--resume", is_flag=True, help="Continue the run in -o from its last checkpoint.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help=option_help("device", "finetune"))
@workers_option("finetune")
@click.option("--reader", help="Reader name (default: chosen by the backbone's modality).")
@click.option("--reader-option", "reader_opts", multiple=True, metavar="KEY=VALUE", help="Reader option.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def finetune_cmd(
    backbone: str,
    train: pathlib.Path,
    output: pathlib.Path,
    weights: str | None,
    preprocess: dict[str, Any],
    head_params: tuple[str, ...],
    grad_clip: float,
    reader: str | None,
    reader_opts: tuple[str, ...],
    on_error: str,
    resume: bool,
    quiet: bool,
    as_json: bool,
    val: pathlib.Path | None,
    init_head: pathlib.Path | None,
    **options: Any,
) -> None:
    """Fine-tune BACKBONE on the labelled data in TRAIN. By default (LP-FT): a linear probe on frozen features
    first, then every block at a tenth of the head's rate, keeping the best epoch on a validation split.

    \b
    tlkit finetune timm/resnet18 data/train -o runs/ft
    tlkit finetune timm/resnet18 data/train -o runs/ft --unfreeze last:2
    tlkit finetune timm/resnet18 data/train -o runs/ft --schedule "head:2,last:1:2,last:3:4"
    tlkit finetune timm/resnet18 data/train -o runs/ft --init-head runs/probe   # LP-FT
    tlkit finetune effnet/lite0 data/train -o runs/ft --init-head runs/probe --input-size 96   # probe at 96 px
    """
    from tlkit.finetuning import finetune
    from tlkit.heads.torch_heads import parse_params
    from tlkit.runtime.distributed import dist_env, errors_on_main_only

    env = dist_env()  # under torchrun every rank runs this command; tlkit.finetune trains with DDP
    progress = _Progress(quiet or as_json or (env is not None and not env.is_main))
    with errors_on_main_only():
        result = finetune(
            backbone,
            train,
            output,
            val=val,
            weights=weights,
            preprocess=preprocess,
            reader=reader,
            reader_options=_reader_options(reader_opts),
            on_error=on_error,
            resume=resume,
            callback=progress,
            head_params=parse_params(head_params),
            grad_clip=grad_clip or None,
            init_head=str(init_head) if init_head else None,
            **options,
        )
    progress._close()
    if env is None or env.is_main:  # rank 0 reports for the whole job
        _report(result, as_json)


def _report(result: Any, as_json: bool) -> None:
    """The run's result: JSON, or the summary, the skipped items and where the run is."""
    if as_json:
        _json(
            {
                "run_dir": str(result.run_dir),
                "report": result.report.to_dict(),
                "evaluated_on": result.evaluated_on,
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "resumed_from": result.resumed_from,
                "plan": result.plan,
                "skipped": [s.to_dict() for s in result.skipped],
            }
        )
        return
    click.echo(result.summary())
    if result.skipped:
        shown = ", ".join(f"{s.id} ({s.reason})" for s in result.skipped[:5])
        more = f" and {len(result.skipped) - 5} more" if len(result.skipped) > 5 else ""
        click.echo(f"skipped {len(result.skipped)} bad item(s): {shown}{more}", err=True)
    adapters = (result.run_dir / "adapter.json").is_file()
    weights = "adapter.safetensors, head.safetensors" if adapters else "model.safetensors"
    click.echo(f"run: {result.run_dir}  ({weights}, report.json, curves.png, confusion.png)")


@click.command("lr-find")
@click.argument("backbone")
@click.argument("train", type=EXISTING)
@click.option("-o", "--output", type=PATH, default=pathlib.Path("lr_find.png"), show_default=True, help="Plot file.")
@click.option("--unfreeze", default="all", show_default=True, metavar="SPEC",
              help="Blocks trained in the test (finetune's default: every block).")  # fmt: skip
@click.option(
    "--adapter",
    metavar="SPEC",
    help=f"Test the adapters tlkit finetune --adapter would train (in the --unfreeze blocks, base frozen): "
    f"{ADAPTER_SPECS}.",
)
@click.option("--start-lr", type=float, default=1e-7, show_default=True)
@click.option("--end-lr", type=float, default=1.0, show_default=True)
@click.option("--steps", type=int, default=100, show_default=True)
@click.option("--weights", help="pretrained (default), none, or a local path.")
@preprocess_options()
@click.option("--head", help="Head type (default linear, started from a linear probe as tlkit finetune's).")
@click.option(
    "--backbone-lr-ratio", type=float, help="Backbone rate = head rate × this (default 0.1, text 0.03, adapters 0.5)."
)
@click.option("--layer-decay", type=float)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--bn-policy", type=click.Choice(["frozen", "affine", "train"]), default="affine", show_default=True)
@precision_option("finetune")
@click.option("--device", default="auto", show_default=True, help=option_help("device", "finetune"))
@workers_option("finetune")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the curve and suggestion as JSON.")
def lr_find_cmd(
    backbone: str,
    train: pathlib.Path,
    output: pathlib.Path,
    weights: str | None,
    preprocess: dict[str, Any],
    quiet: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Learning-rate range test: plot loss against the head rate (backbone scaled) and suggest a rate. It trains what
    tlkit finetune would with the same --unfreeze and --adapter.

    \b
    tlkit lr-find timm/resnet18 data/train
    tlkit lr-find hf/sentence-transformers/all-MiniLM-L6-v2 train.csv --adapter lora
    """
    import contextlib

    from tlkit.cli.train import ExtractProgress
    from tlkit.finetuning import lr_find

    stages = {"features": "linear probe: frozen features", "lr-find": "lr-find"}
    with contextlib.closing(ExtractProgress(quiet or as_json, stages=stages)) as progress:
        result = lr_find(
            backbone, train, output=output, weights=weights, preprocess=preprocess, progress=progress, **options
        )
    if as_json:
        _json(
            {
                "suggested_lr": result.suggested_lr,
                "steepest_lr": result.steepest_lr,
                "min_loss_lr": result.min_loss_lr,
                "diverged": result.diverged,
                "unfreeze": result.unfreeze,
                "adapter": result.adapter,
                "trainable_params": result.trainable_params,
                "lrs": result.lrs,
                "losses": result.losses,
                "plot": str(result.plot),
            }
        )
        return
    click.echo(result.summary())
    click.echo(f"plot: {result.plot}")
    from tlkit.contract.image import preprocess_args

    args = (["--weights", weights] if weights else []) + preprocess_args(preprocess)
    args += ["--adapter", result.adapter] if result.adapter else []
    carried = "".join(" " + shlex.quote(arg) for arg in args)
    click.echo(
        f"next: tlkit finetune {shlex.quote(backbone)} {shlex.quote(str(train))} -o RUN_DIR{carried} "
        f"--unfreeze {result.unfreeze} --lr {result.suggested_lr:.1e}"
    )


@click.command("advise")
@click.argument("train", type=EXISTING)
@click.option("--backbone", help="Probe this backbone's frozen features on a small sample (domain similarity).")
@click.option("--weights", help="Weights for the probe: pretrained (default), none or a path.")
@preprocess_options()
@click.option("--probe-items", type=int, default=600, show_default=True, help="Items in the probe sample.")
@click.option("--modality", type=click.Choice(["image", "text", "audio"]), help="Data modality without --backbone.")
@click.option("--reader", help="Reader name.")
@click.option("--reader-option", "reader_opts", multiple=True, metavar="KEY=VALUE")
@workers_option("extract")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the advice as JSON.")
def advise_cmd(
    train: pathlib.Path,
    backbone: str | None,
    weights: str | None,
    preprocess: dict[str, Any],
    probe_items: int,
    modality: str | None,
    reader: str | None,
    reader_opts: tuple[str, ...],
    workers: int | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Recommend feature extraction or fine-tuning for TRAIN, with the commands to run and why. The commands repeat
    --weights, the preprocessing options and the reader options given here."""
    import contextlib

    from tlkit.cli.train import ExtractProgress
    from tlkit.finetuning.advice import advise

    with contextlib.closing(ExtractProgress(quiet or as_json, stages={"features": "probe features"})) as progress:
        advice = advise(
            train,
            backbone,
            weights=weights,
            probe_items=probe_items,
            modality=modality,
            reader=reader,
            reader_options=_reader_options(reader_opts),
            workers=workers,
            preprocess=preprocess,
            progress=progress,
        )
    if as_json:
        _json(advice.to_dict())
        return
    strategy = {"feature-extraction": "feature extraction", "lp-ft": "linear probe, then fine-tune (LP-FT)"}
    click.echo(f"recommendation: {strategy.get(advice.strategy, advice.strategy)}")
    click.echo("why:")
    for reason in advice.reasons:
        click.echo(f"  - {reason}")
    for warning in advice.warnings:
        click.echo(f"  ! {warning}")
    click.echo("run:")
    for cmd in advice.commands:
        click.echo(f"  {cmd}")


@click.command("export")
@click.argument("run_dir", type=EXISTING)
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
@click.option("-o", "--output", type=PATH, help="Output file (default RUN_DIR/model.onnx or model.torchscript.pt).")
@click.option("--no-check", is_flag=True, help="Skip comparing the exported model's outputs with the original's.")
@click.option("--json", "as_json", is_flag=True)
def export_cmd(run_dir: pathlib.Path, fmt: str, output: pathlib.Path | None, no_check: bool, as_json: bool) -> None:
    """Export a fine-tuned run as ONNX or TorchScript (inputs: preprocessed batches; output: logits)."""
    from tlkit.inference.export import export_model

    result = export_model(run_dir, fmt, output, check=not no_check)
    if as_json:
        _json(result.to_dict())
        return
    click.echo(f"wrote {result.path} ({result.format}; inputs {', '.join(result.inputs)}; output logits)")
    if result.data is not None:
        click.echo(f"weights too large for one file: {result.data} (keep it beside {result.path.name})")
    if not no_check:
        click.echo(f"checked with {result.checked_with}: max |Δ logit| = {result.max_abs_diff:.2e}")
    click.echo(f"preprocessing and class names: {result.sidecar}")


def register(cli: click.Group) -> None:
    for command in (finetune_cmd, lr_find_cmd, advise_cmd, export_cmd):
        cli.add_command(command)
