from setuptools import find_packages, setup

setup(
    name="ablate",
    version="0.1.0",
    description="Controlled data-ablation framework for LLM pretraining on megatron-core (MoE)",
    packages=find_packages(include=["ablate", "ablate.*"]),
    python_requires=">=3.10",
    install_requires=[
        # ranges, not pins: clusters keep their own CUDA torch. CPU machines install
        # torch==2.13.0 first (see README) so pip does not pull a multi-GB CUDA build.
        "torch>=2.4,<2.14",
        "megatron-core>=0.14,<0.17",
        "numpy>=1.24",
        "pyyaml>=6",
        "tqdm>=4.60",
        # tokenizers: loads any local HuggingFace tokenizer.json (fast, Rust, batch encode)
        "tokenizers>=0.19",
        # pyarrow: Parquet ingestion (the format most public corpora ship in)
        "pyarrow>=14",
        # orjson: parses JSONL 2-4x faster than json and validates UTF-8 on bytes; ingestion is JSON-bound
        "orjson>=3.9",
        "tensorboard>=2.14",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6"],
        # only where CUDA is: Transformer Engine layer specs for the GPU backend
        "cuda": ["transformer-engine[pytorch]"],
    },
    entry_points={"console_scripts": ["ablate=ablate.cli:main"]},
)
