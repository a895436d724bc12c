"""The ``mmrec`` command: LightningCLI fit/validate/test/predict plus prepare, embed, recommend.

Nothing in the package imports this module: the LightningCLI it runs, :func:`run_lightning`
and :func:`resolve_config` live in :mod:`mmrec.lightning_cli` (re-exported here for old
imports)."""

from __future__ import annotations

import importlib
import sys

from mmrec.lightning_cli import _cli_class, resolve_config, run_lightning

__all__ = ["HELP", "LIGHTNING", "TOOLS", "_cli_class", "main", "resolve_config", "run_lightning"]

TOOLS = {
    "prepare": ("mmrec.ingest.prepare", "build a dataset folder from raw Amazon files"),
    "embed": (
        "mmrec.content.embed",
        "compute item features (CLIP / text) into <dataset>/features/",
    ),
    "recommend": (
        "mmrec.serving.recommend",
        "time-aware top-K for a user or a history from a checkpoint",
    ),
    "export": (
        "mmrec.serving.export",
        "a checkpoint as one folder for serving: ONNX user tower, item vectors, id maps",
    ),
    "serve": ("mmrec.serving.server", "an exported model over HTTP: POST /recommend, GET /health"),
    "experiment": (
        "mmrec.experiments.experiment",
        "variants x seeds from configs, with paired significance tests: results.md/csv + plot",
    ),
    "tune": (
        "mmrec.experiments.tune",
        "hyper-parameter search (Optuna TPE, pruning, resumable); writes the best config",
    ),
}
LIGHTNING = {
    "fit": "train (and validate) a model: mmrec fit --config configs/quickstart.yaml",
    "validate": "evaluate on the validation split: ... --ckpt_path best|last|CKPT",
    "test": "evaluate on the test split: mmrec test --config CFG --ckpt_path best",
    "predict": "write each user's top-K to parquet: mmrec predict --config CFG --ckpt_path best",
}

HELP = """usage: mmrec <command> [options]

Multimodal, time-aware sequential recommendation on Amazon reviews.

commands:
{commands}

`mmrec <command> --help` shows a command's options. Training commands take a YAML config
(`--config`) and dotted overrides (`--trainer.max_epochs 5`, `--model.d_model 128`).
Each fit writes runs/<name>/<run id>/ (checkpoints/, fit/, and later test/, predict/);
`--ckpt_path best` (or `last`) in test/predict means that checkpoint of the newest fit of the
config's name, and `mmrec fit ... --ckpt_path last` resumes exactly where it stopped.
Logging: W&B runs offline by default (plus a CSV logger); `WANDB_MODE=online mmrec fit ...`
syncs to W&B, `WANDB_MODE=disabled` turns it off. Multi-GPU: `--trainer.devices 4
--trainer.strategy ddp`; multi-node: add `--trainer.num_nodes N` and launch one process per
node with torchrun (or SLURM `srun`), MASTER_ADDR/MASTER_PORT/NODE_RANK set (and MMREC_RUN_ID
when the launcher has no job id of its own).
"""


def _print_help() -> None:
    lines = [f"  {name:<10} {text}" for name, text in LIGHTNING.items()]
    lines += [f"  {name:<10} {text}" for name, (_, text) in TOOLS.items()]
    print(HELP.format(commands="\n".join(lines)))


def _run_tool(name: str, argv: list[str]) -> int:
    module_name = TOOLS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            print(f"mmrec {name}: not available yet ({module_name} is missing)", file=sys.stderr)
            return 2
        raise
    return int(module.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mmrec`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["data", "prepare"]:  # DESIGN.md spelling
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        _print_help()
        return 0
    if argv[0] in TOOLS:
        return _run_tool(argv[0], argv[1:])
    if argv[0] not in LIGHTNING:
        _print_help()
        print(f"mmrec: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    from mmrec.parsing import exit_status

    return exit_status(f"mmrec {argv[0]}", lambda: run_lightning(argv))


if __name__ == "__main__":
    sys.exit(main())
