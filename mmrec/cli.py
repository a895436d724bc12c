"""The ``mmrec`` command: LightningCLI fit/validate/test/predict plus prepare, embed and recommend."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

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
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from mmrec.data.datamodule import AmazonDataModule
    from mmrec.module import MMRecModule
    from mmrec.runs import (
        EpochSummary,
        RandomState,
        Run,
        best_checkpoint_summary,
        mark_latest,
        resolve_ckpt,
        run_for,
    )
    from mmrec.serving.writer import TopKWriter

    class MMRecCLI(LightningCLI):
        """LightningCLI with data->model links, run folders, and mmrec's callbacks and defaults."""

        run: Run

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--name",
                type=str,
                default="mmrec",
                help="Run name: each fit writes into its own folder "
                "<trainer.default_root_dir>/<name>/<run id>/ (checkpoints/, fit/, test/, "
                "predict/), and <name>/latest links to the newest fit, so `--ckpt_path best` "
                "or `last` in test/predict means that fit's checkpoint.",
            )
            for name in ("num_items", "num_users", "data_dir", "time_granularity", "max_len"):
                parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
            parser.add_lightning_class_args(EarlyStopping, "early_stopping")
            parser.set_defaults(
                {
                    "early_stopping.monitor": "val/ndcg@10",
                    "early_stopping.mode": "max",
                    "early_stopping.patience": 10,
                }
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
            # callback: the state after the most recent epoch, for resuming (`--ckpt_path last`)
            parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
            parser.set_defaults(
                {"last_checkpoint.filename": "last", "last_checkpoint.save_top_k": 1}
            )
            parser.add_lightning_class_args(TopKWriter, "predict_writer")
            parser.add_lightning_class_args(EpochSummary, "epoch_summary")

        def _command_config(self):
            command = self.config.get("subcommand")
            return (self.config[command] if command else self.config), command or "run"

        def _parse_ckpt_path(self) -> None:
            cfg, _ = self._command_config()
            root = Path(cfg.trainer.default_root_dir or "runs")
            if cfg.get("ckpt_path"):
                cfg.ckpt_path = resolve_ckpt(cfg.ckpt_path, root, cfg.name)
            super()._parse_ckpt_path()

        def before_instantiate_classes(self) -> None:
            cfg, command = self._command_config()
            root = Path(cfg.trainer.default_root_dir or "runs")
            self.run = run_for(command, root, cfg.name, cfg.get("ckpt_path"))
            if cfg.checkpoint.dirpath is None:
                cfg.checkpoint.dirpath = str(self.run.checkpoints)
            if cfg.last_checkpoint.dirpath is None:
                cfg.last_checkpoint.dirpath = cfg.checkpoint.dirpath

        def instantiate_trainer(self, **kwargs):
            config_logger = self._get(self.config_init, "trainer", default={}).get("logger")
            if config_logger is True:  # the default: CSV + W&B in the run folder
                kwargs["logger"] = [
                    CSVLogger(save_dir=self.run.folder, name=self.run.command, version=""),
                    WandbLogger(
                        save_dir=self.run.folder,
                        project="mmrec",
                        name=f"{self.run.name}/{self.run.folder.name}",
                        group=self.run.name,
                        job_type=self.run.command,
                    ),
                ]
            kwargs["default_root_dir"] = str(self.run.logs)
            return super().instantiate_trainer(**kwargs)

        def after_fit(self) -> None:
            if not self.trainer.is_global_zero:
                return
            mark_latest(self.run)
            line = best_checkpoint_summary(self.trainer.checkpoint_callback)
            print(f"mmrec fit: {line or 'no validation checkpoint was saved'}")
            print(f"mmrec fit: run folder {self.run.folder} (also {self.run.folder.parent / 'latest'})")

        def after_test(self) -> None:
            if not self.trainer.is_global_zero:
                return
            out = Path(self.trainer.log_dir or self.run.logs)
            written = [p for p in (out / "test_slices.csv", out / "test_ndcg_by_month.png") if p.exists()]
            for path in written:
                print(f"mmrec test: wrote {path}")

    cuda = torch.cuda.is_available()
    if cuda:
        torch.set_float32_matmul_precision("high")
    trainer_defaults = {
        "precision": "bf16-mixed" if cuda else "32-true",
        "gradient_clip_val": 1.0,
        "max_epochs": 200,
        "default_root_dir": "runs",
        "log_every_n_steps": 50,
        "logger": True,
        "callbacks": [RandomState()],  # exact resume from --ckpt_path last
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
    from mmrec.runs import RUN_ID_ENV

    saved, run_id = sys.argv, os.environ.get(RUN_ID_ENV)
    sys.argv = [saved[0] if saved else "mmrec", *argv]  # DDP workers re-run this command line
    try:
        cli_cls(
            model_cls,
            data_cls,
            trainer_defaults=trainer_defaults,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    finally:
        sys.argv = saved
        if run_id is None:  # the run id exported for this command's DDP workers ends with it
            os.environ.pop(RUN_ID_ENV, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
