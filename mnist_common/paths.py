"""Where the repository keeps things, defined once (absolute paths from this checkout)."""

from pathlib import Path

#: The repository's root folder.
ROOT = Path(__file__).resolve().parent.parent
#: Trained weights files (``*.safetensors``); ``model.safetensors`` is the default model.
MODELS_DIR = ROOT / "models"
#: The default model: what ``invoke train`` writes and the wasm and native builds embed.
DEFAULT_WEIGHTS = MODELS_DIR / "model.safetensors"
#: Datasets (MNIST's IDX files under ``MNIST/raw``), caches and the sample store; not in git.
DATA_DIR = ROOT / "data"
#: The SQLite store of the drawings the page saves.
SAMPLES_DB = DATA_DIR / "samples.db"
#: Evaluation reports (JSON and figures).
REPORTS_DIR = ROOT / "reports"
#: Benchmark and training-sweep outputs.
RUNS_DIR = ROOT / "runs"
#: The static page; ``web/pkg`` holds the wasm builds.
WEB_DIR = ROOT / "web"
PKG_DIR = WEB_DIR / "pkg"
#: Cargo's build folder.
TARGET_DIR = ROOT / "target"
