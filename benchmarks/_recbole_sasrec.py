"""RecBole 1.2.1 SASRec on Beauty 2014, timed; run by vs_recbole.py inside RecBole's own venv.

Not part of mmrec (RecBole is never a runtime dependency). Prints one JSON line with
seconds per training epoch, seconds per full evaluation, validation NDCG@10 per epoch, the wall
time at which it first reached the target, and test metrics of the best-validation model.

    <recbole-venv>/bin/python benchmarks/_recbole_sasrec.py \
        --tsv ../shared/data/amazon2014-beauty/interactions.tsv \
        --work /tmp/recbole_beauty --epochs 10 --device cpu
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

os.environ.setdefault(
    "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1"
)  # RecBole reloads pickled checkpoints


def write_atomic(tsv: Path, folder: Path) -> None:
    """Benchmark rows -> RecBole's ``.inter`` file.

    The time field is the row's position in the file, so RecBole's sort by (user, time) keeps
    the benchmark's sequence order exactly (days alone tie within a user and RecBole's sort is
    not stable).
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "beauty.inter"
    with open(tsv) as f, open(out, "w") as g:
        rows = csv.DictReader(f, delimiter="\t")
        g.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for i, r in enumerate(rows):
            g.write(f"{r['user_idx']}\t{r['item_idx']}\t{i}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tsv", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--target", type=float, default=0.05, help="validation NDCG@10 to time")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch_size", type=int, default=2048, help="RecBole's default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop_at_target", action="store_true", help="stop once the target is reached")
    args = p.parse_args()

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    work = Path(args.work).resolve()
    write_atomic(Path(args.tsv).resolve(), work / "beauty")
    os.chdir(work)  # RecBole writes log/ and log_tensorboard/ into the working directory
    config = Config(
        model="SASRec",
        dataset="beauty",
        config_dict={
            "data_path": str(work),
            "checkpoint_dir": str(work / "saved"),
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "TIME_FIELD": "timestamp",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "MAX_ITEM_LIST_LENGTH": 50,
            "train_neg_sample_args": None,
            "loss_type": "CE",
            "hidden_size": 64,
            "inner_size": 256,
            "n_layers": 2,
            "n_heads": 2,
            "hidden_dropout_prob": 0.2,
            "attn_dropout_prob": 0.2,
            "epochs": args.epochs,
            "stopping_step": 10,
            "train_batch_size": args.batch_size,
            "learning_rate": 0.001,
            "eval_args": {
                "split": {"LS": "valid_and_test"},
                "order": "TO",
                "mode": "full",
                "group_by": "user",
            },
            "metrics": ["Hit", "NDCG", "MRR"],
            "topk": [10, 20],
            "valid_metric": "NDCG@10",
            "device": args.device,
            "use_gpu": args.device != "cpu",
            "seed": args.seed,
            "reproducibility": True,
            "show_progress": False,
            "log_wandb": False,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset).to(config["device"])

    epoch_s: list[float] = []
    eval_s: list[float] = []
    curve: list[float] = []
    start = [0.0]
    reached = [None]

    def sync() -> None:
        if torch.cuda.is_available() and args.device != "cpu":
            torch.cuda.synchronize()

    class TimedTrainer(Trainer):
        def _train_epoch(self, *a, **k):
            sync()
            t = time.perf_counter()
            out = super()._train_epoch(*a, **k)
            sync()
            epoch_s.append(time.perf_counter() - t)
            return out

        def _valid_epoch(self, *a, **k):
            sync()
            t = time.perf_counter()
            score, result = super()._valid_epoch(*a, **k)
            sync()
            eval_s.append(time.perf_counter() - t)
            curve.append(float(score))
            if reached[0] is None and score >= args.target:
                reached[0] = (len(curve), time.perf_counter() - start[0])
            return score, result

    class Reached(Exception):
        pass

    def stop(epoch: int, score: float) -> None:  # called after RecBole saved an improved model
        if args.stop_at_target and reached[0] is not None:
            raise Reached

    trainer = TimedTrainer(config, model)
    start[0] = time.perf_counter()
    try:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False, callback_fn=stop)
    except Reached:
        pass
    fit_s = time.perf_counter() - start[0]
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    print(
        json.dumps(
            {
                "framework": "RecBole 1.2.1 SASRec",
                "train_rows": len(train_data.dataset),
                "epoch_s": epoch_s,
                "eval_s": eval_s,
                "val_ndcg10": curve,
                "reached": reached[0],
                "fit_s": fit_s,
                "test": {k: float(v) for k, v in test.items()},
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
