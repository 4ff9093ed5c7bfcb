"""The core built-in plugin: the image reader, the torch heads and the fake test backbones.

It is registered through the same ``tlkit`` entry-point group a third-party plugin uses.
"""

from __future__ import annotations

from tlkit.host.hookspecs import RegisterBackbone, RegisterHead, RegisterReader, hookimpl


@hookimpl
def tlkit_register_backbones(register: RegisterBackbone) -> None:
    from tlkit.testing.fake import FakeImageBackbone, FakeTextBackbone

    register("fake/image", FakeImageBackbone, summary="tiny deterministic CNN for tests (tlkit.testing)")
    register(
        "fake/text", FakeTextBackbone, summary="tiny deterministic byte-level text encoder for tests (tlkit.testing)"
    )


@hookimpl
def tlkit_register_heads(register: RegisterHead) -> None:
    from tlkit.heads.sklearn_head import sklearn_head
    from tlkit.heads.torch_heads import auto_head, knn_head, linear_head, mlp_head

    register("auto", auto_head, kind="torch", summary="default: logistic regression, L2 strength by 5-fold CV (L-BFGS)")
    register("linear", linear_head, kind="torch", summary="one linear layer (a linear probe)")
    register("mlp", mlp_head, kind="torch", summary="hidden layers + activation + dropout (default 256, relu, 0.5)")
    register("knn", knn_head, kind="torch", summary="cosine k-nearest neighbours (k=20, softmax-weighted votes)")
    register(
        "sklearn",
        sklearn_head,
        kind="estimator",
        summary="any scikit-learn classifier: --param estimator=logreg|svm|ridge|rf|knn|import.path",
    )


@hookimpl
def tlkit_register_readers(register: RegisterReader) -> None:
    from tlkit.data.audio import AudioReader
    from tlkit.data.hfdatasets import HFDatasetsReader
    from tlkit.data.image import ImageReader
    from tlkit.data.parquet import ParquetReader
    from tlkit.data.streams import MODALITIES
    from tlkit.data.text import TextReader
    from tlkit.data.webdataset import WebDatasetReader

    # The stream readers first: each recognises only its own layout, and the folder readers take any folder.
    for modality in MODALITIES:
        register(
            f"webdataset-{modality}",
            WebDatasetReader(modality),
            summary=f"WebDataset .tar shards ({modality} members), local or URL, brace patterns [extra: webdataset]",
        )
        register(
            f"parquet-{modality}",
            ParquetReader(modality),
            summary=f"Parquet file, folder or glob with a {modality} column, local or URL, by row group "
            "[extra: parquet]",
        )
        register(
            f"hf-datasets-{modality}",
            HFDatasetsReader(modality),
            summary=f"Hugging Face datasets folder (save_to_disk) with a {modality} column [extra: hf-datasets]",
        )
    register(
        "image",
        ImageReader(),
        summary="class folders, flat folders or path,label manifests of JPEG/PNG/WebP/BMP/TIFF/GIF",
    )
    register(
        "text",
        TextReader(),
        summary="CSV/TSV/JSONL with text and label columns, or class folders of .txt files",
    )
    register(
        "audio",
        AudioReader(),
        summary="class folders, flat folders or path,label manifests of WAV/FLAC/Ogg (soundfile; mixed to mono)",
    )
