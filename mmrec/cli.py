"""The ``mmrec`` command: LightningCLI fit/validate/test/predict plus prepare, embed and recommend."""

from __future__ import annotations

import importlib
import os
import sys

TOOLS = {
    "prepare": ("mmrec.data.prepare", "build a dataset folder from raw Amazon files"),
    "embed": ("mmrec.content.embed", "compute item features (CLIP / text) into <dataset>/features/"),
    "recommend": ("mmrec.serving.recommend", "time-aware top-K for a user or a history from a checkpoint"),
}
LIGHTNING = {
    "fit": "train (and validate) a model: mmrec fit --config configs/quickstart.yaml",
    "validate": "evaluate on the validation split: ... --ckpt_path CKPT",
    "test": "evaluate on the test split: mmrec test --config CFG --ckpt_path CKPT",
    "predict": "write each user's top-K to parquet: mmrec predict --config CFG --ckpt_path CKPT",
}

HELP = """usage: mmrec <command> [options]

Multimodal, time-aware sequential recommendation on Amazon reviews.

commands:
{commands}

`mmrec <command> --help` shows a command's options. Training commands take a YAML config
(`--config`) and dotted overrides (`--trainer.max_epochs 5`, `--model.d_model 128`).
Logging: W&B runs offline by default (plus a CSV logger); `WANDB_MODE=online mmrec fit ...`
syncs to W&B, `WANDB_MODE=disabled` turns it off. Multi-GPU: `--trainer.devices 4
--trainer.strategy ddp`; multi-node: add `--trainer.num_nodes N` and launch one process per
node with torchrun (or SLURM `srun`), MASTER_ADDR/MASTER_PORT/NODE_RANK set.
"""


def _cli_class():
    """Build the LightningCLI subclass (imports Lightning lazily, so `mmrec --help` is fast)."""
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI

    from mmrec.data.datamodule import AmazonDataModule
    from mmrec.module import MMRecModule
    from mmrec.serving.writer import TopKWriter

    class MMRecCLI(LightningCLI):
        """LightningCLI with data->model links and mmrec's callbacks and trainer defaults."""

        def add_arguments_to_parser(self, parser) -> None:
            for name in ("num_items", "num_users", "data_dir", "time_granularity", "max_len"):
                parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
            parser.add_lightning_class_args(EarlyStopping, "early_stopping")
            parser.set_defaults(
                {"early_stopping.monitor": "val/ndcg@10", "early_stopping.mode": "max", "early_stopping.patience": 10}
            )
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults(
                {
                    "checkpoint.monitor": "val/ndcg@10",
                    "checkpoint.mode": "max",
                    "checkpoint.filename": "best",
                }
            )
            # Lightning 2.6's save_last only copies the latest *top-k* save, so "last" is its own
            # callback: the state after the most recent epoch, for resuming (`--ckpt_path .../last.ckpt`)
            parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
            parser.set_defaults({"last_checkpoint.filename": "last", "last_checkpoint.save_top_k": 1})
            parser.link_arguments("checkpoint.dirpath", "last_checkpoint.dirpath")
            parser.add_lightning_class_args(TopKWriter, "predict_writer")

    cuda = torch.cuda.is_available()
    if cuda:
        torch.set_float32_matmul_precision("high")
    trainer_defaults = {
        "precision": "bf16-mixed" if cuda else "32-true",
        "gradient_clip_val": 1.0,
        "max_epochs": 200,
        "default_root_dir": "runs",
        "log_every_n_steps": 50,
        "logger": [
            {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "mmrec"}},
            {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"save_dir": "runs", "project": "mmrec"}},
        ],
    }
    return MMRecCLI, MMRecModule, AmazonDataModule, trainer_defaults


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
    os.environ.setdefault("WANDB_MODE", "offline")
    cli_cls, model_cls, data_cls, trainer_defaults = _cli_class()
    cli_cls(
        model_cls,
        data_cls,
        args=argv,
        trainer_defaults=trainer_defaults,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
