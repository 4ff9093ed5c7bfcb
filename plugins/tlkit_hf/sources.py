"""Where a model's files live (a local directory, or a hub repo at a revision) and what identifies them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlkit.plugin import BadInputError, hash_path
from tlkit_hf.naming import config_dir, hub_offline, local_dir, read_json_file

#: Files that define a tokenizer: their contents go into a text backbone's fingerprint.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
    "sentence_bert_config.json",
)
#: Files that define an audio feature extractor.
FEATURE_EXTRACTOR_FILES = ("preprocessor_config.json",)


_COMMITS: dict[tuple[str, str | None, str], str | None] = {}


@dataclass(frozen=True)
class ModelFiles:
    """A model's files. ``root`` is the local directory (``None`` for a hub id); ``subfolder`` is where the
    transformers files sit inside it (a sentence-transformers ``Transformer`` module folder, usually ``""``)."""

    ref: str
    root: Path | None
    revision: str | None = None
    subfolder: str = ""

    @classmethod
    def at(cls, ref: str, revision: str | None = None, *, find_config: bool = True) -> ModelFiles:
        """Files of ``ref``; ``find_config`` locates ``config.json`` (a tokenizer-only folder has none)."""
        root = local_dir(ref)
        if root is None:
            return cls(ref, None, revision)
        if not find_config:
            return cls(str(root), root)
        sub = config_dir(root).relative_to(root).as_posix()
        return cls(str(root), root, None, "" if sub == "." else sub)

    @property
    def local(self) -> bool:
        return self.root is not None

    @property
    def model_dir(self) -> Path | None:
        return None if self.root is None else self.root / self.subfolder

    def pretrained_args(self) -> tuple[str, dict[str, Any]]:
        """``(path or id, kwargs)`` for ``from_pretrained``."""
        if self.root is not None:
            return str(self.model_dir), {}
        kwargs: dict[str, Any] = {}
        if self.revision:
            kwargs["revision"] = self.revision
        if self.subfolder:
            kwargs["subfolder"] = self.subfolder
        return self.ref, kwargs

    def read_json(self, filename: str, *, model_file: bool = False) -> Any | None:
        """A JSON file relative to the root (or to the model folder with ``model_file``); ``None`` if absent."""
        rel = f"{self.subfolder}/{filename}" if model_file and self.subfolder else filename
        if self.root is not None:
            path = self.root / rel
            return read_json_file(path) if path.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        hub_offline()
        try:
            path = hf_hub_download(self.ref, rel, revision=self.revision)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return None
        except Exception as exc:
            raise BadInputError(
                f"hf/{self.ref}: cannot fetch {rel} from the Hugging Face hub ({type(exc).__name__}: {exc}); "
                f"check the id and your connection, or use a local directory"
            ) from exc
        return read_json_file(Path(path))

    def commit(self) -> str | None:
        """The hub commit that ``config.json`` resolves to (from the cached snapshot path); ``None`` locally."""
        if self.root is not None:
            return None
        key = (self.ref, self.revision, self.subfolder)
        if key not in _COMMITS:
            from huggingface_hub import hf_hub_download

            rel = f"{self.subfolder}/config.json" if self.subfolder else "config.json"
            hub_offline()
            try:
                parts = Path(hf_hub_download(self.ref, rel, revision=self.revision)).parts
            except Exception:  # unreachable hub: fall back to the revision name
                return None
            _COMMITS[key] = parts[parts.index("snapshots") + 1] if "snapshots" in parts else None
        return _COMMITS[key]

    def identity(self, names: tuple[str, ...] = (), commit: str | None = None) -> str:
        """A content hash of the local files ``names`` in the model folder (all files when empty), or the hub id
        at its commit (``commit``, as resolved when the config was read), else at the requested revision."""
        if self.root is None:
            at = commit or self.revision or "main"
            return f"hub:{self.ref}@{at}" + (f"/{self.subfolder}" if self.subfolder else "")
        if not names:
            return "sha256:" + hash_path(self.root)
        h = hashlib.sha256()
        folder = self.model_dir
        assert folder is not None
        for n in names:
            p = folder / n
            if p.is_file():
                h.update(n.encode())
                h.update(hash_path(p).encode())
        return "sha256:" + h.hexdigest()

    def license(self) -> str | None:
        """The ``license:`` of a local model card's front matter, when there is one."""
        if self.root is None:
            return None
        readme = self.root / "README.md"
        try:
            text = readme.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        if not text.startswith("---"):
            return None
        for line in text.split("\n---", 1)[0].splitlines()[1:]:
            if line.startswith("license:"):
                return line.split(":", 1)[1].strip() or None
        return None
