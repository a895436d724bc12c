"""The tables of ``mmrec experiment``: results.md, results.csv and results.png from stored runs."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from mmrec.experiments.stats import holm, paired_test
from mmrec.experiments.store import ResultStore, code_label

if TYPE_CHECKING:
    from mmrec.experiments.plan import ExperimentConfig, Run

#: Per-user metrics the paired tests compare.
PAIRED = ("ndcg@10", "hr@10")


def _mean_std(values: list[float]) -> str:
    a = np.asarray(values, dtype=float)
    if len(a) == 0:
        return "—"
    std = a.std(ddof=1) if len(a) > 1 else 0.0
    return f"{a.mean():.4f} ± {std:.4f}"


def collect(runs: list[Run], store: ResultStore) -> tuple[dict[str, list[dict]], list[str]]:
    """Stored records per variant (in run order) and the runs that have none."""
    found: dict[str, list[dict]] = {}
    missing = []
    for run in runs:
        record = store.get(run.key)
        if record is None:
            missing.append(f"{run.variant} seed {run.seed}")
            continue
        planned = {"variant": run.variant, "seed": run.seed, "key": run.key}
        found.setdefault(run.variant, []).append(record | planned | {"baseline": run.baseline})
    return found, missing


def run_name(record: dict) -> str:
    """``variant seed N`` (a baseline: its name; one run stands for every seed)."""
    return (
        record["variant"]
        if record.get("baseline")
        else f"{record['variant']} seed {record['seed']}"
    )


def other_code(made: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    """The code (label) behind most of ``made`` (``(run name, code label)`` pairs) and the
    runs made by other code."""
    if not made:
        return "", []
    most = Counter(label for _, label in made).most_common(1)[0][0]
    return most, [(name, label) for name, label in made if label != most]


def _code_lines(found: dict[str, list[dict]]) -> list[str]:
    """The code that made the results: one line, or those made by other code than the rest."""
    made = [(run_name(r), code_label(r.get("code"))) for rs in found.values() for r in rs]
    most, others = other_code(made)
    if not made:
        return []
    if not others and most == "unknown":
        return ["", "Code: not recorded (results stored before results named their code)."]
    if not others:
        return ["", f"Code: every result was made by {most}."]
    return [
        "",
        "## Code",
        "",
        f"Results made by other code than the rest ({most}):",
        "",
        *(f"- {name}: {label}" for name, label in others),
        "",
        "`--mixed_code false` refuses such a table; train them again (move their files out of "
        "the store) to make every result with one code.",
    ]


def per_user_means(records: list[dict], store: ResultStore, metric: str) -> pl.DataFrame:
    """``user_idx`` and the user's ``metric`` averaged over a variant's seeds."""
    frames = [store.per_user(r["key"]).select("user_idx", metric) for r in records]
    stacked = pl.concat(frames)
    return stacked.group_by("user_idx").agg(pl.col(metric).mean()).sort("user_idx")


def significance(
    cfg: ExperimentConfig, found: dict[str, list[dict]], store: ResultStore
) -> list[dict]:
    """Each variant against the reference, per paired metric: difference, 95% bootstrap
    interval, paired t-test and Wilcoxon p-values, both Holm-adjusted over the variants."""
    reference = cfg.reference or next(iter(cfg.variants))
    if reference not in found:
        return []
    rows = []
    for metric in PAIRED:
        ref = per_user_means(found[reference], store, metric)
        tests = []
        for variant, records in found.items():
            if variant == reference:
                continue
            other = per_user_means(records, store, metric)
            both = ref.join(other, on="user_idx", suffix="_v")
            if len(both) != len(ref) or len(both) != len(other):
                raise ValueError(
                    f"{variant} and {reference} were tested on different users "
                    f"({len(other)} vs {len(ref)}): different data or split?"
                )
            result = paired_test(both[metric].to_numpy(), both[f"{metric}_v"].to_numpy())
            tests.append((variant, result, len(both)))
        t_holm = holm([r.t_pvalue for _, r, _ in tests])
        w_holm = holm([r.wilcoxon_pvalue for _, r, _ in tests])
        for (variant, r, users), pt, pw in zip(tests, t_holm, w_holm, strict=True):
            rows.append(
                {"metric": metric, "variant": variant, "users": users, "result": r,
                 "p_ttest_holm": pt, "p_wilcoxon_holm": pw}
            )  # fmt: skip
    return rows


def _header(metric: str) -> str:
    """``ndcg@10`` -> ``NDCG@10``, ``mrr`` -> ``MRR``."""
    name, at, k = metric.partition("@")
    return f"{name.upper()}{at}{k}"


def _p(value: float) -> str:
    return "<1e-4" if value < 1e-4 else f"{value:.4f}"


def write_report(
    cfg: ExperimentConfig,
    runs: list[Run],
    store: ResultStore,
    out: Path,
    command: str | None,
    title: str | None = None,
    protocol: str | None = None,
) -> list[str]:
    """Write results.md, results.csv and results.png into ``out``; returns the missing runs.
    ``command`` is the command line that made them, as it is to be rerun.
    ``title`` and ``protocol`` replace the experiment's name and the protocol read from the
    runs' data (for a fold's table, and for the table pooled over folds)."""
    found, missing = collect(runs, store)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(found, cfg.metrics, out / "results.csv")
    _plot(found, out / "results.png")
    reference = cfg.reference or next(iter(cfg.variants))
    command = command or "mmrec experiment"
    lines = [
        f"# {title or cfg.name}",
        "",
        f"Made by `{command}` from stored runs (`{cfg.store}`, one JSON per resolved config: "
        "a rerun trains nothing). Test split, best-validation checkpoint of each run, mean ± "
        f"std over the seeds of each row (configured: {cfg.seeds}; baselines: deterministic, "
        "one run).",
        "",
        f"Base configs: {', '.join(f'`{b}`' for b in cfg.base)}"
        + (f"; overrides for all: `{' '.join(cfg.overrides)}`" if cfg.overrides else ""),
        "",
        f"Protocol: {protocol or _protocol(runs)}.",
        "",
        "| variant | "
        + " | ".join(_header(m) for m in cfg.metrics)
        + " | best val NDCG@10 | seeds | epochs | train s | what it adds |",
        "|---" * (len(cfg.metrics) + 6) + "|",
    ]
    for variant, records in found.items():
        cells = [_mean_std([r["test"].get(m, math.nan) for r in records]) for m in cfg.metrics]
        val = [r["val_ndcg@10"] for r in records if "val_ndcg@10" in r]
        epochs = "/".join(str(r.get("epochs", 0)) for r in records)
        secs = np.mean([r.get("train_seconds", 0.0) for r in records])
        what = _what(cfg, variant)
        seeds = "—" if variant in cfg.baselines else ",".join(str(r["seed"]) for r in records)
        lines.append(
            f"| {variant} | " + " | ".join(cells)
            + f" | {_mean_std(val) if val else '—'} | {seeds} | {epochs} | {secs:.0f} | `{what}` |"
        )  # fmt: skip
    if missing:
        lines += ["", f"Missing runs (not stored yet): {', '.join(missing)}."]
    lines += _chosen_on_validation(cfg, found)
    rows = significance(cfg, found, store)
    if rows:
        lines += [
            "",
            f"## Against the reference `{reference}` (paired over the same test users)",
            "",
            "Per-user values averaged over seeds; difference = variant - reference, 95% "
            "bootstrap interval over users; p-values of the paired t-test and the Wilcoxon "
            f"signed-rank test, Holm-adjusted over the {len(found) - 1} comparisons.",
            "",
            "| metric | variant | users | difference | 95% interval | p (t) | p (t, Holm) "
            "| p (Wilcoxon) | p (Wilcoxon, Holm) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            r = row["result"]
            lines.append(
                f"| {row['metric']} | {row['variant']} | {row['users']:,} | {r.mean_diff:+.4f} "
                f"| [{r.ci_low:+.4f}, {r.ci_high:+.4f}] | {_p(r.t_pvalue)} "
                f"| {_p(row['p_ttest_holm'])} | {_p(r.wilcoxon_pvalue)} "
                f"| {_p(row['p_wilcoxon_holm'])} |"
            )
    if cfg.published:
        lines += _published(cfg, found)
    if cfg.note:
        lines += ["", cfg.note.strip()]
    lines += _code_lines(found)
    lines += ["", f"Per run: `results.csv`; plot: `results.png`. Store keys: {_keys(found)}."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return missing


def _chosen_on_validation(cfg: ExperimentConfig, found: dict[str, list[dict]]) -> list[str]:
    """A line naming the baseline and the model variant with the best mean validation
    NDCG@10: the ones to compare, chosen without the test split."""
    best = {}
    for kind, names in (
        ("baseline", set(cfg.baselines)),
        ("model", set(found) - set(cfg.baselines)),
    ):
        val = {
            v: float(np.mean([r["val_ndcg@10"] for r in found[v]]))
            for v in names
            if v in found and found[v] and all("val_ndcg@10" in r for r in found[v])
        }
        if val:
            name = max(val, key=val.get)
            test = np.mean([r["test"].get("ndcg@10", math.nan) for r in found[name]])
            best[kind] = f"{name} (val {val[name]:.4f}, test {test:.4f})"
    if not best:
        return []
    return ["", "Chosen on validation (NDCG@10), test shown beside: "
            + "; ".join(f"best {k}: {v}" for k, v in best.items()) + "."]  # fmt: skip


def _protocol(runs: list[Run]) -> str:
    """The split and evaluation protocol of the model runs' data, in words (with "refit on
    train + valid" for the rows marked so), or why it is unknown."""
    from mmrec.data.datamodule import AmazonDataModule
    from mmrec.lightning_cli import resolve_config

    run = next((r for r in runs if r.baseline is None and r.refit_of is None), None)
    if run is None:
        run = next(iter(runs), None)
    if run is None:
        return "unknown (no runs)"
    texts = []
    for args in (run.args, (*run.args, *run.test_args)):
        data = dict(resolve_config(list(args))["data"]) | {"prepare": None}
        try:
            texts.append(AmazonDataModule(**data).protocol_description())
        except (OSError, ValueError, KeyError) as err:
            return f"unknown ({data.get('data_dir')}: {err})"
    trained, text = texts
    if text != trained:  # test_overrides: tested otherwise than validated
        text += f" at test; the models trained and their epochs chosen as: {trained}"
    refit = any(r.refit_of is not None for r in runs)
    return text + ("; rows marked (refit): trained again on train + valid" if refit else "")


def _what(cfg: ExperimentConfig, variant: str) -> str:
    """The entries a row adds to the base configs (a refit twin: its variant's, refit)."""
    from mmrec.experiments.plan import SUFFIX

    if variant in cfg.baselines:
        return str(cfg.baselines[variant])
    own = variant.removesuffix(SUFFIX)
    what = " ".join(cfg.variants.get(own) or []) or "base"
    return f"{what}, refit on train + valid" if own != variant else what


def _keys(found: dict[str, list[dict]]) -> str:
    return ", ".join(f"{v}: " + " ".join(r["key"] for r in rs) for v, rs in found.items())


def _published(cfg: ExperimentConfig, found: dict[str, list[dict]]) -> list[str]:
    """Published figures beside mmrec's rows, with what each row uses."""
    lines = [
        "",
        "## Beside published figures (same split and protocol as stated by each source)",
        "",
        "| model | NDCG@10 | HR@10 | uses the target's timestamp | uses item content | source |",
        "|---|---|---|---|---|---|",
    ]
    for p in cfg.published:
        lines.append(
            f"| {p['model']} | {p.get('ndcg@10', '—')} | {p.get('hr@10', '—')} "
            f"| {_yes(p.get('uses_target_time'))} | {_yes(p.get('uses_content'))} "
            f"| {p.get('source', '')} |"
        )
    for variant, records in found.items():
        described = cfg.variant_info.get(variant, {})
        lines.append(
            f"| mmrec {variant} | {_mean_std([r['test']['ndcg@10'] for r in records])} "
            f"| {_mean_std([r['test']['hr@10'] for r in records])} "
            f"| {_yes(described.get('uses_target_time'))} | {_yes(described.get('uses_content'))}"
            " | this table |"
        )
    return lines


def _yes(value) -> str:
    return "—" if value is None else ("yes" if value else "no")


def _write_csv(found: dict[str, list[dict]], metrics: list[str], path: Path) -> None:
    keys = sorted({k for rs in found.values() for r in rs for k in r["test"]})
    cols = ["variant", "seed", "key", *keys, "val_ndcg@10", "best_epoch", "epochs"]
    cols += ["train_seconds", "code"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        for variant, records in found.items():
            for r in records:
                row = {"variant": variant, "seed": r["seed"], "key": r["key"], **r["test"]}
                row |= {k: r.get(k) for k in ("val_ndcg@10", "best_epoch", "epochs")}
                row["train_seconds"] = r.get("train_seconds")
                row["code"] = code_label(r.get("code"))
                writer.writerow(row)


def _plot(found: dict[str, list[dict]], path: Path) -> None:
    """Test NDCG@10 per variant, mean and std over seeds (bars), each seed as a dot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(found)
    fig = Figure(figsize=(max(5.0, 1.1 * len(names)), 3.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, name in enumerate(names):
        values = np.asarray([r["test"].get("ndcg@10", math.nan) for r in found[name]])
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        ax.bar(i, values.mean(), yerr=std, color="tab:blue", alpha=0.7, capsize=3)
        ax.scatter(np.full(len(values), i), values, color="black", s=8, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test NDCG@10")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
