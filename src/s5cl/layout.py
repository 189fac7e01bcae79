"""Where every stage reads and writes, relative to the project root (dvc.yaml and the Snakefile
name the same paths)."""

from pathlib import Path

SPLIT = Path("data/splits/split.parquet")
FEATURES = Path("data/features")  # the frozen encoder's cached features (model.freeze: all)
FEATURES_INFO = FEATURES / "features.json"  # what they were made from
COLDSTART = Path(
    "data/coldstart"
)  # the embedding split.select chooses on (s5cl.training.coldstart_embedding)
LABELS = Path("labels")  # what people labeled
LABELS_CSV = LABELS / "labels.csv"  # what s5cl label writes
SUGGEST = Path("suggest")  # the next images to label: TO_LABEL and SHEET inside
TO_LABEL, SHEET = "to_label.csv", "contact_sheet.png"
PSEUDO = Path("data/pseudo/pseudo.parquet")
MODELS = Path("models")
METRICS = Path("metrics")
PLOTS = Path("plots")  # every figure as PNG and SVG: one folder per stage that draws
EVALUATE_PLOTS = PLOTS / "evaluate"  # confusion matrices, per-class F1
REPORT_PLOTS = PLOTS / "report"  # training curves, embedding map, pseudo-labels
REPORT = Path("report")
RESULTS = Path("results")  # the sweep's runs and what aggregates them
SWEEP_FILES = ("summary.csv", "summary.md", "comparisons.csv", "budget_curve.png",
               "budget_curve.svg", "by_budget.png", "by_budget.svg")  # fmt: skip
CHECKPOINTS = Path("checkpoints")  # resume checkpoints: not pipeline outputs, deleted when done
DRIVER = Path(".s5cl-driver.json")  # the dvc or snakemake process running stages here (cli.py)


def raw_dir(dataset: str) -> Path:
    return Path("data/raw") / dataset


def packed_dir(dataset: str) -> Path:
    return Path("data/packed") / dataset


def model_path(stage: str) -> Path:
    """warmup -> models/warmup.pt; retrain writes the final model."""
    return MODELS / f"{'final' if stage == 'retrain' else stage}.pt"


def resume_path(stage: str, run: str) -> Path:
    """The resume checkpoint of one run of `stage`, named by the run's fingerprint id."""
    return CHECKPOINTS / f"{stage}-{run}.pt"


def resume_paths(stage: str) -> list[Path]:
    """Every resume checkpoint of `stage` on disk, of any run (and the unnamed one of older
    versions, checkpoints/<stage>.pt)."""
    return sorted([*CHECKPOINTS.glob(f"{stage}-*.pt"), *CHECKPOINTS.glob(f"{stage}.pt")])
