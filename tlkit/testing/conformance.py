"""The backbone conformance kit: checks a plugin author runs on their own backbone.

Use it from a test::

    from tlkit.testing import check_backbone
    report = check_backbone(my_backbone, sample_items)
    assert report.ok, report.summary()

or through the pytest plugin's ``tlkit_conformance`` fixture. Each check is independent and named, so a failure says
which property of the contract is broken.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tlkit.contract.backbone import REQUIRED_PREPROCESS_KEYS, Backbone
from tlkit.host.registry import MODALITIES

CHECKS = (
    "modality",
    "preprocess_config",
    "embedding_shape",
    "determinism",
    "batch_invariance",
    "blocks_cover_params",
    "fingerprint_stable",
    "fingerprint_tracks_preprocess",
)


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class ConformanceReport:
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


def check_modality(backbone: Backbone, items: Sequence[Any]) -> str:
    declared = getattr(type(backbone), "modality", None)
    if declared not in MODALITIES:
        return f"the class attribute modality is {declared!r}; set it to one of {', '.join(MODALITIES)}"
    if backbone.spec.modality != declared:
        return f"spec.modality {backbone.spec.modality!r} differs from the class's modality {declared!r}"
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


def check_fingerprint_stable(backbone: Backbone, items: Sequence[Any]) -> str:
    fp = backbone.fingerprint()
    if not isinstance(fp, str) or not fp:
        return "fingerprint() must return a non-empty string"
    again = backbone.fingerprint()
    fresh = backbone.replace().fingerprint()
    if fp != again or fp != fresh:
        return f"fingerprint changes between calls or instances: {fp}, {again}, {fresh}"
    return ""


def _perturb(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1 if isinstance(value, int) else (value * 1.5 + 0.01)
    if isinstance(value, str):
        return value + "-x"
    if isinstance(value, list | tuple):
        return [_perturb(v) for v in value]
    return None


def check_fingerprint_tracks_preprocess(backbone: Backbone, items: Sequence[Any]) -> str:
    fp = backbone.fingerprint()
    preprocess = backbone.spec.preprocess
    for key, value in preprocess.items():
        changed = _perturb(value)
        if changed is None:
            continue
        other = backbone.replace(preprocess={key: changed})
        if other.spec.preprocess.get(key) != changed:
            return f"replace(preprocess={{{key!r}: ...}}) did not change spec.preprocess[{key!r}]"
        if other.fingerprint() == fp:
            return f"fingerprint did not change when preprocess[{key!r}] changed"
        return ""
    return "spec.preprocess has no value to vary"


_FUNCS: dict[str, Callable[[Backbone, Sequence[Any]], str]] = {
    "modality": check_modality,
    "preprocess_config": check_preprocess_config,
    "embedding_shape": check_embedding_shape,
    "determinism": check_determinism,
    "batch_invariance": check_batch_invariance,
    "blocks_cover_params": check_blocks_cover_params,
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
