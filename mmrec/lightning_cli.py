"""mmrec's LightningCLI: the fit/validate/test/predict commands with run folders, checkpoint
checks and mmrec's callbacks and defaults, run from Python (:func:`run_lightning`) or resolved
without building anything (:func:`resolve_config`). The ``mmrec`` command line
(:mod:`mmrec.cli`), ``mmrec experiment`` and ``mmrec tune`` all go through it."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from mmrec.config import ConfigError


def _cli_class():
    """Build the LightningCLI subclass (imports Lightning lazily, so `mmrec --help` is fast)."""
    import torch
    from jsonargparse import ArgumentError
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from mmrec.callbacks import EpochLogInterval, EpochSummary, RandomState, WandbRun
    from mmrec.checkpoints import (
        EVAL_OPTIONS,
        LINKED,
        check_command_line,
        check_data,
        check_weights,
        checked_hparams,
        read_checkpoint,
    )
    from mmrec.data.datamodule import AmazonDataModule
    from mmrec.module import MMRecModule
    from mmrec.runs import (
        Run,
        best_checkpoint_summary,
        mark_latest,
        resolve_ckpt,
        run_for,
    )
    from mmrec.serving.writer import TopKWriter

    class MMRecCLI(LightningCLI):
        """LightningCLI with data->model links, run folders, checkpoint checks, and mmrec's
        callbacks and defaults."""

        run: Run
        ckpt_hparams: dict[str, Any]
        ckpt_state: dict[str, Any]

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
            for name in LINKED:
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
            """With --ckpt_path: the model is the checkpoint's; evaluation options given now
            apply to it, other model options given on the command line must agree with it."""
            self.ckpt_hparams = {}
            cfg, command = self._command_config()
            if not cfg.get("ckpt_path"):
                return
            root = Path(cfg.trainer.default_root_dir or "runs")
            cfg.ckpt_path = resolve_ckpt(cfg.ckpt_path, root, cfg.name)
            if not Path(cfg.ckpt_path).is_file():
                raise ConfigError(f"--ckpt_path {cfg.ckpt_path}: no such checkpoint file")
            ckpt = read_checkpoint(cfg.ckpt_path)
            trusted = cfg.model.get("trusted_modules") or []
            hparams = checked_hparams(ckpt, cfg.ckpt_path, trusted, model=MMRecModule)
            self.ckpt_hparams, self.ckpt_state = hparams, ckpt["state_dict"]
            if not hparams or command == "run":
                return
            check_command_line(cfg.model, hparams, sys.argv[1:])
            skip = (*EVAL_OPTIONS, *LINKED)
            keep = {k: v for k, v in hparams.items() if k not in skip and not k.startswith("_")}
            exits, self.parser.exit_on_error = self.parser.exit_on_error, False
            try:
                self.config = self.parser.parse_object({command: {"model": keep}}, self.config)
            except ArgumentError as err:
                reason = " ".join(str(err).split())[:300]
                raise ConfigError(
                    f"checkpoint {cfg.ckpt_path}: its stored model config does not parse "
                    f"({reason}); a damaged or edited checkpoint? pass one written by `mmrec fit`"
                ) from None
            finally:
                self.parser.exit_on_error = exits

        def before_instantiate_classes(self) -> None:
            cfg, command = self._command_config()
            root = Path(cfg.trainer.default_root_dir or "runs")
            self.run = run_for(command, root, cfg.name, cfg.get("ckpt_path"))
            if cfg.checkpoint.dirpath is None:
                cfg.checkpoint.dirpath = str(self.run.checkpoints)
            if cfg.last_checkpoint.dirpath is None:
                cfg.last_checkpoint.dirpath = cfg.checkpoint.dirpath
            if cfg.data.get("fit_on_valid") and command == "fit":
                # refit: the validation events are trained on, so nothing validates, stops or
                # picks a checkpoint early: the epoch count is given, best.ckpt = the last epoch
                cfg.trainer.limit_val_batches = 0
                cfg.trainer.num_sanity_val_steps = 0
                cfg.early_stopping.check_on_train_epoch_end = False
                cfg.checkpoint.monitor = None
                print(
                    f"mmrec fit: data.fit_on_valid: training on train + valid events for "
                    f"{cfg.trainer.max_epochs} epochs, no validation",
                    flush=True,
                )

        def after_instantiate_classes(self) -> None:
            if self.ckpt_hparams:
                check_data(self.ckpt_hparams, self.datamodule, self.config_init)
                cfg, _ = self._command_config()
                check_weights(self.model, self.ckpt_state, cfg.ckpt_path)

        def instantiate_trainer(self, **kwargs):
            config_logger = self._get(self.config_init, "trainer", default={}).get("logger")
            if config_logger is True:  # the default: CSV + W&B in the run folder
                self.run.folder.mkdir(parents=True, exist_ok=True)
                # each command is a W&B run of its own: WandbLogger would reuse a run left open
                # by an earlier command of this process (`run_lightning` called from Python)
                finish_wandb()
                # an experiment's or study's run names its group and config (variant, seed...)
                callbacks = self.trainer_defaults.get("callbacks", [])
                given = [c for c in callbacks if isinstance(c, WandbRun)]
                wandb = WandbLogger(
                    save_dir=self.run.folder,
                    project="mmrec",
                    name=f"{self.run.name}/{self.run.folder.name}",
                    group=given[0].group if given else self.run.name,
                    job_type=self.run.command,
                    **({"config": given[0].config} if given else {}),
                )
                wandb._wandb_init.pop("anonymous", None)  # deprecated in wandb: warns if passed
                kwargs["logger"] = [
                    CSVLogger(save_dir=self.run.folder, name=self.run.command, version=""),
                    wandb,
                ]
            kwargs["default_root_dir"] = str(self.run.logs)
            return super().instantiate_trainer(**kwargs)

        def after_fit(self) -> None:
            if not self.trainer.is_global_zero:
                return
            mark_latest(self.run)
            line = best_checkpoint_summary(self.trainer.checkpoint_callback)
            print(f"mmrec fit: {line or 'no validation checkpoint was saved'}")
            latest = self.run.folder.parent / "latest"
            print(f"mmrec fit: run folder {self.run.folder} (also {latest})")

        def after_test(self) -> None:
            out = Path(self.trainer.log_dir or self.run.logs)  # a collective under DDP
            if not self.trainer.is_global_zero:
                return
            for name in ("test_slices.csv", "test_ndcg_by_month.png", "metrics.csv"):
                if (out / name).exists():
                    print(f"mmrec test: wrote {out / name}")

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
        # RandomState: exact resume from --ckpt_path last; EpochLogInterval: step metrics at
        # least once an epoch (log_every_n_steps capped at the steps of an epoch)
        "callbacks": [RandomState(), EpochLogInterval()],
    }
    return MMRecCLI, MMRecModule, AmazonDataModule, trainer_defaults


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def _quiet() -> None:
    """Silence messages a user cannot act on (process-wide, so only here in the CLI)."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # evaluation metrics are reduced across processes by torchmetrics (each user once) and the
    # training loss is shown per process: Lightning's advice to add sync_dist does not apply
    warnings.filterwarnings(
        "ignore", message=r"It is recommended to use `self.log\('(val|test|train)/"
    )
    # every fit's EpochLogInterval lowers log_every_n_steps to the steps of an epoch, which is
    # what this warning (given before any callback can act) asks for
    warnings.filterwarnings(
        "ignore", message=r"The number of training batches \(\d+\) is smaller than the logging"
    )
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoTips())


def run_lightning(argv: list[str], callbacks: list | tuple = ()):
    """Run one Lightning command (``fit``, ``test``...) exactly as ``mmrec`` does and return
    the CLI object (``.trainer``, ``.model``, ``.datamodule``, ``.run``). ``callbacks`` are
    added to the trainer's (e.g. a pruning callback of ``mmrec tune``). Errors propagate."""
    from lightning.pytorch.cli import LightningArgumentParser

    from mmrec.parsing import short_errors
    from mmrec.runs import RUN_ID_ENV

    os.environ.setdefault("WANDB_MODE", "offline")
    _quiet()
    cli_cls, model_cls, data_cls, trainer_defaults = _cli_class()
    trainer_defaults["callbacks"] = [*trainer_defaults["callbacks"], *callbacks]
    saved, run_id = sys.argv, os.environ.get(RUN_ID_ENV)
    # LightningCLI parses sys.argv; DDP workers re-run this command line (its script path first)
    sys.argv = [saved[0] if saved else "mmrec", *argv]
    try:
        return cli_cls(
            model_cls,
            data_cls,
            trainer_defaults=trainer_defaults,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_class=short_errors(LightningArgumentParser),
            parser_kwargs={"prog": "mmrec"},
        )
    finally:
        sys.argv = saved
        if run_id is None:  # the run id exported for this command's DDP workers ends with it
            os.environ.pop(RUN_ID_ENV, None)


def resolve_config(argv: list[str]) -> dict:
    """The complete configuration a ``fit`` command line resolves to (config files, overrides
    and every default), as plain data; nothing is built, no data is read. ``argv`` holds the
    options only (no subcommand)."""
    import yaml

    cli_cls, model_cls, data_cls, trainer_defaults = _cli_class()

    class ParseOnly(cli_cls):
        def _parse_ckpt_path(self) -> None:
            pass

        def _set_seed(self) -> None:
            pass

        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

        def after_instantiate_classes(self) -> None:
            pass

    saved = sys.argv
    sys.argv = [saved[0] if saved else "mmrec", *argv]
    try:
        cli = ParseOnly(
            model_cls,
            data_cls,
            trainer_defaults=trainer_defaults,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            run=False,
        )
    finally:
        sys.argv = saved
    text = cli.parser.dump(cli.config, skip_link_targets=False, skip_none=False, format="yaml")
    return yaml.safe_load(text)


def finish_wandb() -> None:
    """Finish the current W&B run, if any, so the next logger starts its own."""
    wandb = sys.modules.get("wandb")  # not imported: no run was started
    if wandb is not None and wandb.run is not None:
        wandb.finish()
