"""The backbone conformance kit: checks a plugin author runs on their own backbone.

Use it from a test::

    from tlkit.testing import check_backbone
    report = check_backbone(my_backbone, sample_items)
    assert report.ok, report.summary()

or through the pytest plugin's ``tlkit_conformance`` fixture. Each check is independent and named, so a failure says
which property of the contract is broken.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tlkit.contract.backbone import REQUIRED_PREPROCESS_KEYS, Backbone, check_first_output, validated
from tlkit.host.registry import MODALITIES, get_registry

#: The checks, in the order they run; pass a subset as ``checks=`` to run only some.
CHECKS = (
    "validate",
    "modality",
    "preprocess_config",
    "embedding_shape",
    "determinism",
    "batch_invariance",
    "blocks_cover_params",
    "blocks_reach_output",
    "fingerprint_stable",
    "fingerprint_tracks_preprocess",
)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: its ``name`` (one of :data:`CHECKS`), whether it passed, and on failure a
    one-line ``detail`` saying what is wrong (a crash inside the check is a failure, ``"raised <type>: <message>"``).
    """

    name: str
    ok: bool
    detail: str = ""


@dataclass
class ConformanceReport:
    """What :func:`check_backbone` found: the backbone's name and one :class:`CheckResult` per check run, in order.

    ``report.ok`` is true when every check passed, ``report.failed`` lists the failed checks' names,
    ``report["determinism"]`` is one check's result, and ``report.summary()`` is a readable multi-line report (what
    :func:`assert_conformant` raises).
    """

    backbone: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if not r.ok]

    def __getitem__(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def summary(self) -> str:
        lines = [f"conformance of {self.backbone}: {'ok' if self.ok else 'FAILED ' + ', '.join(self.failed)}"]
        lines += [f"  [{'ok' if r.ok else 'FAIL'}] {r.name}{': ' + r.detail if r.detail else ''}" for r in self.results]
        return "\n".join(lines)


def _embed(backbone: Backbone, items: Sequence[Any]) -> Any:
    import torch

    with torch.inference_mode():
        return backbone.embed(backbone.preprocess(list(items))).float().cpu()


def _cosines(a: Any, b: Any) -> Any:
    import torch

    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def check_validate(backbone: Backbone, items: Sequence[Any]) -> str:
    """The backbone's own options pass its :meth:`~tlkit.plugin.Backbone.validate`."""
    validated(backbone)
    return ""


def check_modality(backbone: Backbone, items: Sequence[Any]) -> str:
    """The class's modality is a known one, and the spec and the registration (when the name is registered) agree."""
    declared = getattr(type(backbone), "modality", None)
    if declared not in MODALITIES:
        return f"the class attribute modality is {declared!r}; set it to one of {', '.join(MODALITIES)}"
    if backbone.spec.modality != declared:
        return f"spec.modality {backbone.spec.modality!r} differs from the class's modality {declared!r}"
    entry = get_registry().backbones.get(backbone.name)
    if entry is not None and entry.modality != backbone.spec.modality:
        return (
            f"{backbone.name} is registered as {entry.modality} (plugin {entry.plugin}) but its spec says "
            f"{backbone.spec.modality!r}"
        )
    return ""


def check_preprocess_config(backbone: Backbone, items: Sequence[Any]) -> str:
    spec = backbone.spec
    needed = REQUIRED_PREPROCESS_KEYS.get(spec.modality)
    if needed is None:
        return f"unknown modality {spec.modality!r}"
    missing = [k for k in needed if spec.preprocess.get(k) in (None, "", [], ())]
    return f"spec.preprocess lacks {', '.join(missing)}" if missing else ""


def check_embedding_shape(backbone: Backbone, items: Sequence[Any]) -> str:
    import torch

    with torch.inference_mode():
        out = backbone.embed(backbone.preprocess(list(items)))
    if not isinstance(out, torch.Tensor):
        return f"embed returned {type(out).__name__}, expected a tensor"
    expected = (len(items), backbone.spec.embed_dim)
    if tuple(out.shape) != expected:
        return f"shape {tuple(out.shape)}, expected {expected} (N, spec.embed_dim)"
    check_first_output(backbone, out, len(items))  # what extraction and fine-tuning check on their first batch
    if not out.is_floating_point():
        return f"dtype {out.dtype}, expected floating point"
    if not torch.isfinite(out).all():
        return "embedding has NaN or inf"
    return ""


def check_determinism(backbone: Backbone, items: Sequence[Any]) -> str:
    import torch

    a, b = _embed(backbone, items), _embed(backbone, items)
    if not torch.equal(a, b):
        return f"two passes differ by up to {(a - b).abs().max().item():.3g}"
    return ""


def check_batch_invariance(backbone: Backbone, items: Sequence[Any], tol: float = 1e-4) -> str:
    batched = _embed(backbone, items)
    worst = 1.0
    for i, item in enumerate(items):
        alone = _embed(backbone, [item])
        worst = min(worst, float(_cosines(alone, batched[i : i + 1])[0]))
    if not worst >= 1 - tol:
        return f"an item's embedding depends on its batch: cosine {worst:.6f} < {1 - tol}"
    return ""


def check_blocks_cover_params(backbone: Backbone, items: Sequence[Any]) -> str:
    names = [n for n, _ in backbone.module.named_parameters()]
    blocks = backbone.blocks()
    if not blocks:
        return "blocks() is empty"
    block_names = [b.name for b in blocks]
    if len(set(block_names)) != len(block_names):
        return f"duplicate block names in {block_names}"
    seen: dict[str, str] = {}
    problems = []
    for b in blocks:
        for p in b.params:
            if p in seen:
                problems.append(f"{p} is in both {seen[p]} and {b.name}")
            seen[p] = b.name
    unknown = [p for p in seen if p not in set(names)]
    missing = [p for p in names if p not in seen]
    if unknown:
        problems.append(f"{len(unknown)} block params are not module params (e.g. {unknown[0]})")
    if missing:
        problems.append(f"{len(missing)} params are in no block (e.g. {missing[0]})")
    return "; ".join(problems[:3])


def block_gradients(backbone: Backbone, items: Sequence[Any]) -> dict[str, float]:
    """Each block's gradient norm from the pooled embedding of ``items``: one backward pass of a fixed random
    projection of the embedding (a projection, not the sum: the sum of a normalised embedding is nearly constant).
    The module stays in eval mode, and every parameter's ``requires_grad`` is restored afterwards."""
    import torch

    params = dict(backbone.module.named_parameters())
    before = {n: p.requires_grad for n, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            out = backbone.embed(backbone.preprocess(list(items))).float()
            proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.device)
            grads = torch.autograd.grad((out * proj).sum(), list(params.values()), allow_unused=True)
    finally:
        for n, p in params.items():
            p.requires_grad_(before[n])
    by_name = dict(zip(params, grads, strict=True))
    norms = {}
    for block in backbone.blocks():
        parts = [by_name[p].double().pow(2).sum() for p in block.params if by_name.get(p) is not None]
        norms[block.name] = float(torch.stack(parts).sum().sqrt()) if parts else 0.0
    return norms


def check_blocks_reach_output(backbone: Backbone, items: Sequence[Any]) -> str:
    """Every block offered for training (``reaches_output``) gets a non-zero gradient from the pooled embedding, and
    a block flagged as not reaching it gets none."""
    norms = block_gradients(backbone, items)
    flags = {b.name: b.reaches_output for b in backbone.blocks()}
    dead = [name for name, norm in norms.items() if flags[name] and not norm > 0]
    flagged = [name for name, norm in norms.items() if not flags[name] and norm > 0]
    problems = []
    if dead:
        problems.append(
            f"blocks {', '.join(dead)} get no gradient from the pooled embedding: their output is unused; flag them "
            f"Block(..., reaches_output=False)"
        )
    if flagged:
        problems.append(f"blocks {', '.join(flagged)} are flagged reaches_output=False but get a gradient")
    return "; ".join(problems)


def check_fingerprint_stable(backbone: Backbone, items: Sequence[Any]) -> str:
    fp = backbone.fingerprint()
    if not isinstance(fp, str) or not fp:
        return "fingerprint() must return a non-empty string"
    again = backbone.fingerprint()
    fresh = backbone.replace().fingerprint()
    if fp != again or fp != fresh:
        return f"fingerprint changes between calls or instances: {fp}, {again}, {fresh}"
    return ""


def default_variants(preprocess: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The kit's own valid preprocessing changes, used when a backbone's ``conformance_variants()`` is empty: the
    normalisation mean moved by 0.05 (any image model accepts it), a shorter text ``max_length`` (at least 2), a
    shorter audio window or clip. Never an input of another shape, a new channel count or a made-up name."""
    out: list[dict[str, Any]] = []
    mean = preprocess.get("mean")
    if isinstance(mean, list | tuple) and mean and all(isinstance(v, int | float) for v in mean):
        out.append({"mean": [round(float(v) + (0.05 if v < 0.5 else -0.05), 6) for v in mean]})
    length = preprocess.get("max_length")
    if isinstance(length, int) and not isinstance(length, bool) and length > 2:
        out.append({"max_length": max(2, length // 2)})
    for key in ("window_seconds", "clip_seconds"):
        value = preprocess.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            out.append({key: round(float(value) / 2, 6)})
            break
    return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))  # tuples and lists compare equal


def check_fingerprint_tracks_preprocess(backbone: Backbone, items: Sequence[Any]) -> str:
    """Each valid preprocessing change (the backbone's ``conformance_variants()``, else :func:`default_variants`)
    shows in the spec and changes the fingerprint."""
    fp = backbone.fingerprint()
    own = backbone.conformance_variants()
    variants = own or default_variants(backbone.spec.preprocess)
    if not variants:
        return "no preprocessing change to try: return valid overrides from conformance_variants()"
    for change in variants:
        try:
            other = backbone.replace(preprocess=change)
            got = {k: other.spec.preprocess.get(k) for k in change}
        except Exception as exc:
            hint = "" if own else "; return valid overrides from conformance_variants()"
            return f"replace(preprocess={change!r}) raised {type(exc).__name__}: {exc}{hint}"
        if _plain(got) != _plain(dict(change)):
            return f"replace(preprocess={change!r}) gave spec.preprocess {got!r}"
        if other.fingerprint() == fp:
            return f"fingerprint did not change with preprocess {change!r}"
    return ""


_FUNCS: dict[str, Callable[[Backbone, Sequence[Any]], str]] = {
    "validate": check_validate,
    "modality": check_modality,
    "preprocess_config": check_preprocess_config,
    "embedding_shape": check_embedding_shape,
    "determinism": check_determinism,
    "batch_invariance": check_batch_invariance,
    "blocks_cover_params": check_blocks_cover_params,
    "blocks_reach_output": check_blocks_reach_output,
    "fingerprint_stable": check_fingerprint_stable,
    "fingerprint_tracks_preprocess": check_fingerprint_tracks_preprocess,
}


def check_backbone(
    backbone: Backbone,
    items: Sequence[Any],
    *,
    checks: Sequence[str] = CHECKS,
    batch_tolerance: float = 1e-4,
) -> ConformanceReport:
    """Run the conformance checks on ``backbone`` with raw ``items`` (at least two, of varied size for text/audio).

    ``batch_tolerance`` is the allowed ``1 - cosine`` between an item embedded alone and in a batch.
    """
    if len(items) < 2:
        raise ValueError("check_backbone needs at least two sample items")
    backbone.load()
    report = ConformanceReport(backbone.name)
    for name in checks:
        func = _FUNCS[name]
        try:
            detail = (
                check_batch_invariance(backbone, items, batch_tolerance)
                if name == "batch_invariance"
                else func(backbone, items)
            )
        except Exception as exc:  # a crash is a failed check, reported with its cause
            detail = f"raised {type(exc).__name__}: {exc}"
        report.results.append(CheckResult(name, not detail, detail))
    return report


def assert_conformant(backbone: Backbone, items: Sequence[Any], **kwargs: Any) -> ConformanceReport:
    """:func:`check_backbone`, raising ``AssertionError`` with the summary when any check fails."""
    report = check_backbone(backbone, items, **kwargs)
    if not report.ok:
        raise AssertionError(report.summary())
    return report
