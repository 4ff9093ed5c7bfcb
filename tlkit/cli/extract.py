"""``tlkit extract`` and the ``tlkit cache`` group (info, verify, export, merge).

Only click and light tlkit modules are imported here; the engine (torch, h5py) loads inside the commands.
"""

from __future__ import annotations

import pathlib
import sys
from typing import TYPE_CHECKING, Any

import click

from tlkit.cli.options import preprocess_options
from tlkit.runtime.policy import PRECISIONS, option_help
from tlkit.runtime.progress import ProgressEvent

if TYPE_CHECKING:
    from tlkit.extraction import ExtractResult

SHOW_SKIPPED = 10


class _InputType(click.Path):
    """A local path that must exist, or a URL or pattern (``s3://b/{000..009}.tar``, ``data/*.parquet``) passed on
    as it is, for the readers that take them (docs/large-datasets.md)."""

    def __init__(self) -> None:
        super().__init__(exists=True, path_type=pathlib.Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from tlkit.data.remote import is_pattern, is_url

        if isinstance(value, str) and (is_url(value) or is_pattern(value)):
            return value
        return super().convert(value, param, ctx)


def _parse_reader_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r}: use KEY=VALUE", param_hint="--reader-option")
        out[key.strip().replace("-", "_")] = value
    return out


class _ProgressBar:
    """Draws engine progress events with rich: items, items/s and ETA; a second bar while the cache is written."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def __call__(self, ev: ProgressEvent) -> None:
        if self._progress is None or ev.stage not in ("extract", "assemble"):
            return
        label = "extracting" if ev.stage == "extract" else "writing cache"
        task = self._tasks.get(ev.stage)
        if task is None:
            task = self._tasks[ev.stage] = self._progress.add_task(label, total=max(ev.total, 1), rate="")
        rate = f"{ev.rate:,.1f} items/s" if ev.stage == "extract" and ev.rate else ""
        if ev.skipped:
            rate += f" ({ev.skipped} skipped)"
        self._progress.update(task, completed=ev.done, total=max(ev.total, 1), rate=rate)


@click.command("extract")
@click.argument("backbone")
@click.argument("input_path", metavar="INPUT", type=_InputType())
@click.option("-o", "--output", required=True, type=click.Path(path_type=pathlib.Path), help="The cache file (.h5).")
@click.option("--weights", default="pretrained", show_default=True, help="pretrained, none, or a local file/folder.")
@preprocess_options()
@click.option("--device", default="auto", show_default=True, help=option_help("device", "extract"))
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help=option_help("precision", "extract"))  # fmt: skip
@click.option("--batch-size", default="auto", show_default=True, help=option_help("batch_size", "extract"))
@click.option("--workers", default="auto", show_default=True, help=option_help("workers", "extract"))
@click.option("--layers", default="last", show_default=True,
              help="last (the final embedding only), all (also the pooled output of every layer the backbone offers, "
                   "from one forward pass: for timm CNNs the feature stages, e.g. 5 of EfficientNet's 9 blocks; "
                   "tlkit cache info lists them), or a comma list of those names.")  # fmt: skip
@click.option("--views", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also store K augmented views per item (the backbone's training transform).")  # fmt: skip
@click.option("--store-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--decode", type=click.Choice(["reduced", "exact", "device"]), default="reduced", show_default=True,
              help="Images: reduced decodes large JPEGs at a reduced size that the backbone's resize allows "
                   "(faster; per-row cosine >= 0.999 to exact); exact decodes every image in full; device ships "
                   "baseline JPEGs compressed and decodes them in batches where the model runs (nvJPEG on a GPU), "
                   "resized and cropped there.")  # fmt: skip
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True,
              help="skip: record unreadable items with reasons; fail: stop at the first one.")  # fmt: skip
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N items.")
@click.option("--overwrite", is_flag=True, help="Replace a cache (or unfinished run) made with other settings.")
@click.option("--shard", metavar="I/N", default=None,
              help="Extract only shard I of N (contiguous); join the parts with tlkit cache merge.")  # fmt: skip
@click.option("--commit-rows", type=click.IntRange(min=1), default=None,
              help="Items per committed segment: the most a crash can lose (default: from the row size).")  # fmt: skip
@click.option("--reader", "reader_name", default=None, help="Reader name (default: the first that fits INPUT).")
@click.option("--text-column", default=None, help="Text column of a CSV/TSV/JSONL file (text readers).")
@click.option("--label-column", default=None, help="Label column of a table or manifest.")
@click.option("--path-column", default=None, help="Path column of a manifest CSV.")
@click.option("-O", "--reader-option", "reader_option", multiple=True, metavar="KEY=VALUE",
              help="Any other reader option, repeatable.")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="No progress bar (the one-line summary is still printed).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of the summary line.")
def extract_cmd(
    backbone: str,
    input_path: pathlib.Path | str,
    output: pathlib.Path,
    weights: str,
    preprocess: dict[str, Any],
    device: str,
    precision: str,
    batch_size: str,
    workers: str,
    layers: str,
    views: int,
    store_dtype: str,
    decode: str,
    on_error: str,
    limit: int | None,
    overwrite: bool,
    shard: str | None,
    commit_rows: int | None,
    reader_name: str | None,
    text_column: str | None,
    label_column: str | None,
    path_column: str | None,
    reader_option: tuple[str, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Extract pooled embeddings of every item under INPUT into an HDF5 feature cache.

    Reruns are cheap: a complete cache is left alone, new items are added, an interrupted run resumes.

    \b
    Examples:
      tlkit extract timm/resnet50 photos/ -o photos.h5
      tlkit extract effnet/lite0 data/train -o train.h5 --input-size 160   # smaller input: much faster
    """
    from tlkit.cli.group import draw_bars
    from tlkit.extraction import extract
    from tlkit.runtime.distributed import dist_env, errors_on_main_only

    options = _parse_reader_options(reader_option)
    for key, value in (("text_column", text_column), ("label_column", label_column), ("path_column", path_column)):
        if value is not None:
            options[key] = value
    env = dist_env()  # under torchrun, tlkit.extract shards over the ranks and rank 0 reports for the job
    show_bar = not quiet and not as_json and draw_bars() and (env is None or env.is_main)
    with _ProgressBar(show_bar) as bar, errors_on_main_only():
        result = extract(
            backbone, input_path, output, weights=weights, preprocess=preprocess, device=device, precision=precision,
            batch_size=batch_size, workers=workers, layers=layers, views=views, store_dtype=store_dtype,
            on_error=on_error, limit=limit, overwrite=overwrite, shard=shard, commit_rows=commit_rows,
            reader=reader_name, reader_options=options, progress=bar, decode=decode,
        )  # fmt: skip
    if env is None or env.is_main:  # rank 0 reports for the whole job
        _report(result, output, as_json)


def _report(result: ExtractResult, output: pathlib.Path, as_json: bool) -> None:
    """The result as JSON, or the skipped items (on stderr) and the one-line summary."""
    if as_json:
        from tlkit.cli.group import echo_json

        echo_json(
            {
                "path": str(result.path),
                "status": result.status,
                "items": result.n_items,
                "computed": result.n_computed,
                "reused": result.n_reused,
                "skipped": result.n_skipped,
                "skipped_now": [s.to_dict() for s in result.skipped_now],
                "unlabelled": result.unlabelled,
                "flags": result.flags,
                "seconds": round(result.seconds, 3),
                "compute_seconds": round(result.compute_seconds, 3),
                "items_per_s": round(result.items_per_s, 2),
                "device": result.device,
                "precision": result.precision,
                "batch_size": result.batch_size,
                "workers": result.workers,
            }
        )
        return
    from tlkit.data.ids import display_id

    for s in result.skipped_now[:SHOW_SKIPPED]:
        click.echo(f"skipped {display_id(s.id)}: {s.reason}", err=True)
    if len(result.skipped_now) > SHOW_SKIPPED:
        click.echo(
            f"... and {len(result.skipped_now) - SHOW_SKIPPED} more skipped (tlkit cache info {output} --json)",
            err=True,
        )
    if result.unlabelled:
        more = ", ..." if len(result.unlabelled) > 3 else ""
        first = ", ".join(display_id(i) for i in result.unlabelled[:3]) + more
        click.echo(
            f"note: {len(result.unlabelled)} item(s) have no label ({first}); they are stored unlabelled, and "
            "training leaves them out",
            err=True,
        )
    click.echo(result.summary())


# -- tlkit cache ... ------------------------------------------------------------------------------------------------
@click.group("cache")
def cache_group() -> None:
    """Inspect, check, export and merge feature caches."""


@cache_group.command("info")
@click.argument("cache", type=click.Path(path_type=pathlib.Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (everything, including skipped items).")
def cache_info_cmd(cache: pathlib.Path, as_json: bool) -> None:
    """Show what a cache holds: backbone, fingerprint, items, dimensions, layers, views, classes, skipped items."""
    from tlkit.cache import FeatureCache

    with FeatureCache(cache) as fc:
        info = fc.info()
    if as_json:
        from tlkit.cli.group import echo_json

        echo_json(info)
        return
    bb = info["backbone"]
    classes = info["class_names"]
    rows = [
        ("path", info["path"]),
        ("backbone", f"{bb['name']} (weights {bb['weights']})"),
        ("preprocess", _preprocess_row(bb)),
        ("fingerprint", bb["fingerprint"]),
        ("items", f"{info['items']:,}"),
        ("features", f"{info['dim']} x {info['store_dtype']} (computed in {info['precision']})"),
        ("layers", ", ".join(f"{k} ({v})" for k, v in info["layers"].items()) or "-"),
        ("views", str(info["views"] or "-")),
        (
            "classes",
            f"{len(classes)}: {', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}"
            if classes
            else "unlabelled",
        ),  # fmt: skip
        ("skipped", str(len(info["skipped"]))),
        ("flags", ", ".join(f"{k} {v}" for k, v in info["flags"].items()) or "-"),
        ("dataset", f"{info['dataset'].get('root')} ({info['dataset'].get('reader')} reader)"),
        ("created", f"{info['created']} by tlkit {info['tlkit_version']} (format {info['format_version']})"),
        ("size", f"{info['file_bytes'] / 1e6:,.1f} MB"),
    ]
    if info.get("shard"):
        rows.append(("shard", f"{info['shard']['index']}/{info['shard']['count']}"))
    for key, value in rows:
        click.echo(f"{key:12} {value}")
    from tlkit.data.ids import display_id

    for s in info["skipped"][:SHOW_SKIPPED]:
        click.echo(f"  skipped {display_id(s['id'])}: {s['reason']}")


def _preprocess_row(backbone: dict[str, Any]) -> str:
    """The preprocessing options the cache was extracted with (as flags), or that the backbone's own was used."""
    from tlkit.contract.image import preprocess_args

    overrides = (backbone.get("init_kwargs") or {}).get("preprocess") or {}
    size = ((backbone.get("spec") or {}).get("preprocess") or {}).get("input_size")
    shown = f"input size {size[-2]}x{size[-1]}; " if isinstance(size, list) and len(size) >= 2 else ""
    return shown + (" ".join(preprocess_args(overrides)) if overrides else "the backbone's own")


@cache_group.command("verify")
@click.argument("cache", type=click.Path(path_type=pathlib.Path))
@click.option("--no-checksums", is_flag=True, help="Skip re-hashing the data (faster on huge caches).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cache_verify_cmd(cache: pathlib.Path, no_checksums: bool, as_json: bool) -> None:
    """Check a cache: complete, consistent shapes, unique ids, valid labels, checksums. Exit 1 if not OK."""
    from tlkit.cache import verify_cache

    rep = verify_cache(cache, checksums=not no_checksums)
    if as_json:
        from tlkit.cli.group import echo_json

        echo_json(rep.to_dict())
    else:
        head = f"{rep.status.upper()}: {cache}"
        if rep.items is not None:
            head += f" ({rep.items:,} items)"
        click.echo(head)
        for p in rep.problems:
            click.echo(f"  problem: {p}")
        for w in rep.warnings:
            click.echo(f"  warning: {w}")
    if not rep.ok:
        sys.exit(1)


@cache_group.command("export")
@click.argument("cache", type=click.Path(path_type=pathlib.Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=pathlib.Path))
@click.option("--format", "fmt", type=click.Choice(["npz", "csv"]), default="npz", show_default=True,
              help="npz: arrays X, y, ids, class_names (numpy.load, no pickle); csv: id,label,class,f0..")  # fmt: skip
@click.option("--layer", default=None, help="Export a cached layer instead of the final features.")
@click.option("--view", type=click.IntRange(min=0), default=None, help="Export augmented view K.")
def cache_export_cmd(cache: pathlib.Path, output: pathlib.Path, fmt: str, layer: str | None, view: int | None) -> None:
    """Export features, labels and ids to npz or csv."""
    from tlkit.cache import export_cache

    out = export_cache(cache, output, fmt, layer=layer, view=view)
    click.echo(f"wrote {out}")


@cache_group.command("merge")
@click.argument("parts", nargs=-1, required=True, type=click.Path(exists=True, path_type=pathlib.Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=pathlib.Path))
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--virtual", is_flag=True,
              help="Map the parts with HDF5 virtual datasets instead of copying them (fast; the parts must stay "
                   "beside OUTPUT).")  # fmt: skip
def cache_merge_cmd(parts: tuple[pathlib.Path, ...], output: pathlib.Path, overwrite: bool, virtual: bool) -> None:
    """Merge shard caches (tlkit extract --shard I/N) into one; checks they are complete, disjoint and alike."""
    from tlkit.cache import FeatureCache, merge_caches

    out = merge_caches(list(parts), output, overwrite=overwrite, virtual=virtual)
    with FeatureCache(out) as fc:
        click.echo(f"merged {len(parts)} parts into {out}: {len(fc):,} items")


def register(cli: click.Group) -> None:
    cli.add_command(extract_cmd)
    cli.add_command(cache_group)
