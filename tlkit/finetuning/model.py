"""``TransferModel``: a backbone and a head as one ``nn.Module``, the unit that fine-tuning trains and saves.

Its ``state_dict`` keys are ``backbone.*`` and ``head.*``, exactly the keys of a fine-tuned run's
``model.safetensors``. Being a single module is what lets DDP (or any wrapper) take the whole trainable thing.

With adapters (:mod:`tlkit.finetuning.adapters`) the backbone module carries ``peft`` layers, ``blocks`` name the
adapter parameters, and a run saves :meth:`TransferModel.run_state_dict`: the adapters, the BatchNorm tensors of
adapter blocks and the head, never the frozen base.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tlkit.errors import BadInputError

if TYPE_CHECKING:
    from tlkit.contract.backbone import Backbone, Batch, Block
    from tlkit.finetuning.adapters import Adapters, AdapterSpec
    from tlkit.finetuning.bn import BatchNormPolicy

FINETUNE_KIND = "finetune"


class TransferModel(nn.Module):
    """``forward(batch) = head(backbone.embed(batch))``.

    Attributes:
        backbone: the backbone network (``Backbone.module``), registered as a sub-module.
        head: the head network.
        backbone_wrapper: the :class:`tlkit.Backbone`, for ``preprocess_item(item, train=...)``, ``collate``,
            ``blocks()`` and the spec.
        class_names: class names in logit order (may be empty).
        config: the run config it was loaded from (``from_run``), else ``{}``.
        bn_policy: the :class:`tlkit.finetuning.bn.BatchNormPolicy` re-applied after every ``train()``; ``None`` =
            plain torch.
        adapters: the :class:`tlkit.finetuning.adapters.Adapters` injected into the backbone, or ``None``.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        class_names: Sequence[str] = (),
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone.module
        self.head = head
        self.backbone_wrapper = backbone
        self.class_names = list(class_names)
        self.config = dict(config or {})
        self.bn_policy: BatchNormPolicy | None = None
        self.adapters: Adapters | None = None
        self._blocks: list[Block] | None = None

    # -- structure -------------------------------------------------------------------------------------------
    @property
    def blocks(self) -> list[Block]:
        if self._blocks is None:
            self._blocks = self.backbone_wrapper.blocks()
        return self._blocks

    def set_bn_policy(self, policy: str) -> None:
        from tlkit.finetuning.bn import BatchNormPolicy

        self.bn_policy = BatchNormPolicy(self.backbone, self.blocks, policy)

    def attach_adapters(
        self, spec: AdapterSpec, trainable_by_phase: Sequence[Sequence[str]], seed: int = 0
    ) -> list[list[str]]:
        """Inject ``spec``'s adapters into every block that some phase trains; from now on those blocks train their
        adapters (the base stays frozen). Returns the phases' trainable blocks, keeping those that got adapters."""
        from tlkit.finetuning.adapters import attach_adapters

        chosen = {name for phase in trainable_by_phase for name in phase}
        names = [b.name for b in self.blocks if b.name in chosen]
        self.adapters = attach_adapters(self.backbone, self.blocks, spec, names, seed=seed)
        self._use_adapters()
        kept = set(self.adapters.block_names)
        return [[name for name in phase if name in kept] for phase in trainable_by_phase]

    def _use_adapters(self) -> None:
        assert self.adapters is not None
        self._blocks = self.adapters.blocks
        if self.bn_policy is not None:  # BatchNorm layers map to blocks through the blocks' parameters
            self.set_bn_policy(self.bn_policy.policy)

    def merge_adapters(self) -> None:
        """Fold the adapters into the backbone's weights (``peft`` ``merge_and_unload``), for export; the model
        computes the same function (to float rounding) with the base architecture. A no-op without adapters."""
        if self.adapters is not None:
            self.adapters.merge()
            self.adapters = None
            self._blocks = None
            if self.bn_policy is not None:
                self.set_bn_policy(self.bn_policy.policy)

    def run_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a run saves and restores: the whole ``state_dict``, or with adapters only what training
        changes (adapters, BatchNorm tensors of adapter blocks, head)."""
        if self.adapters is None:
            return self.state_dict()
        from tlkit.finetuning.adapters import run_state

        return run_state(self.adapters, self.backbone, self.head)

    def load_run_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`run_state_dict` saved, strictly (raises ``RuntimeError`` on missing or unexpected keys)."""
        if self.adapters is None:
            self.load_state_dict(state, strict=True)
            return
        expected = set(self.run_state_dict())
        if set(state) != expected:
            odd = sorted(set(state) ^ expected)
            raise RuntimeError(f"the saved tensors do not match the model with adapters (e.g. {odd[0]!r})")
        self.load_state_dict(state, strict=False)

    def set_trainable(self, trainable: Sequence[str]) -> None:
        """Unfreeze exactly the named blocks (the head always trains), then re-apply the BatchNorm policy."""
        from tlkit.finetuning.freeze import set_trainable

        set_trainable(self.backbone, self.blocks, trainable)
        for p in self.head.parameters():
            p.requires_grad_(True)
        if self.bn_policy is not None:
            self.bn_policy.set_trainable(trainable)
            self.bn_policy.apply(self.training)

    def train(self, mode: bool = True) -> TransferModel:
        # Re-apply the BatchNorm policy after torch switches every sub-module's mode (Lightning issue 21531).
        super().train(mode)
        if self.bn_policy is not None:
            self.bn_policy.apply(mode)
        return self

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        features = self.backbone_wrapper.embed(batch)
        if not self.__dict__.get("_output_checked"):  # the contract's check of the first batch (width, modality)
            from tlkit.contract.backbone import check_first_output

            check_first_output(self.backbone_wrapper, features)
            self.__dict__["_output_checked"] = True
        logits: torch.Tensor = self.head(features)
        return logits

    def preprocess(self, items: Sequence[Any]) -> Batch:
        """Evaluation preprocessing of raw items into a batch (use with :meth:`forward`)."""
        return self.backbone_wrapper.preprocess(list(items), train=False)

    # -- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def from_run(
        cls, run_dir: str | os.PathLike[str], device: str | torch.device = "cpu", base: Backbone | None = None
    ) -> TransferModel:
        """Rebuild a fine-tuned model from ``RUN_DIR`` (config kind ``"finetune"``), in eval mode on ``device``.

        Signature: ``TransferModel.from_run(run_dir, device="cpu", base=None) -> TransferModel``.

        A run that trained adapters (``adapter=``) holds no backbone weights: its base backbone is built with the
        recorded weights (or ``base``, a :class:`tlkit.Backbone`, which gets the adapters in place), checked against
        the recorded fingerprint and weights digest (a different base is refused), then the adapters
        (``adapter.safetensors``, ``adapter.json``) and the head (``head.safetensors``) are loaded.

        The backbone architecture is rebuilt from the config (name and options) without downloading weights,
        then ``model.safetensors`` (keys ``backbone.*`` and ``head.*``) is loaded strictly. Use
        ``model.backbone_wrapper.preprocess_item(item, train=False)`` and ``collate`` to prepare inputs, and
        ``model.class_names`` for the logit order. The backbone's weights differ from the base model's, so features
        cached from the base backbone must not be fed to this model's head.

        The config's head must be a registered torch head with plain parameters, and ``model.safetensors`` must
        match its checksum, before anything is built. Raises :class:`tlkit.errors.BadInputError` for a missing,
        damaged or crafted run, or a run of another kind.
        """
        from tlkit.heads.allow import check_head_record
        from tlkit.heads.torch_heads import build_head
        from tlkit.runs.rundir import CONFIG, MODEL_WEIGHTS, load_tensors, read_config

        run_dir = Path(run_dir)
        config = read_config(run_dir)
        if config.get("kind") != FINETUNE_KIND:
            raise BadInputError(
                f"{run_dir}: a {config.get('kind')!r} run, not a fine-tuned model; TransferModel.from_run needs a "
                f"run written by tlkit finetune"
            )
        head_cfg = config["head"]
        name, params = check_head_record(head_cfg, run_dir / CONFIG, torch_only=True)  # before anything is built
        if config.get("adapter"):
            return cls._from_adapter_run(run_dir, config, name, params, base).to(device).eval()
        if base is not None:
            raise BadInputError(f"{run_dir}: holds a whole fine-tuned model, not adapters; drop base")
        fix = "copy the run directory again, or rerun tlkit finetune"
        state = load_tensors(run_dir / MODEL_WEIGHTS, fix)
        backbone = rebuild_backbone(config["backbone"])
        head = build_head(name, int(head_cfg["in_dim"]), int(head_cfg["n_classes"]), **params)
        model = cls(backbone, head, class_names=config.get("class_names", []), config=config)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise BadInputError(
                f"{run_dir / MODEL_WEIGHTS}: weights do not fit {config['backbone']['name']} + head "
                f"{name} ({first}); the run directory is damaged or from another tlkit version"
            ) from exc
        return model.to(device).eval()

    @classmethod
    def _from_adapter_run(
        cls, run_dir: Path, config: dict[str, Any], head_name: str, head_params: dict[str, Any], base: Backbone | None
    ) -> TransferModel:
        from tlkit.finetuning.adapters import load_adapters
        from tlkit.heads.torch_heads import build_head, load_head_state
        from tlkit.host.api import backbone_from_record
        from tlkit.runs.rundir import HEAD_WEIGHTS, load_tensors

        head_state = load_tensors(run_dir / HEAD_WEIGHTS, "copy the run directory again, or rerun tlkit finetune")
        recorded = config["backbone"]
        if base is None:
            base = backbone_from_record(recorded)
            base.check_weights_available()  # the published base weights: one line offline, before the model library
        backbone = base.load()
        fingerprint = backbone.fingerprint()
        if fingerprint != recorded.get("fingerprint"):
            raise BadInputError(
                f"{run_dir}: its adapters were trained on {recorded.get('name')} (fingerprint "
                f"{recorded.get('fingerprint')}), not on {backbone.name} with weights {backbone.weights} (fingerprint "
                f"{fingerprint}); load them onto the base they were trained on"
            )
        base_record = {"name": backbone.name, "fingerprint": fingerprint}
        adapters = load_adapters(run_dir, backbone.module, backbone.blocks(), base_record)
        head_cfg = config["head"]
        head = build_head(head_name, int(head_cfg["in_dim"]), int(head_cfg["n_classes"]), **head_params)
        load_head_state(head, head_state, run_dir / HEAD_WEIGHTS, head_name)
        model = cls(backbone, head, class_names=config.get("class_names", []), config=config)
        model.adapters = adapters
        model._use_adapters()
        return model


def rebuild_backbone(backbone_cfg: dict[str, Any]) -> Backbone:
    """The loaded backbone of a run config's ``backbone`` section, built without pretrained weights where possible
    (the run's own weights replace them)."""
    from tlkit.contract.backbone import WEIGHTS_NONE
    from tlkit.host.api import backbone_from_record

    try:
        return backbone_from_record(backbone_cfg, weights=WEIGHTS_NONE).load()
    except Exception:  # some families cannot build without their original files (an HF config, say)
        pass
    return backbone_from_record(backbone_cfg).load()
