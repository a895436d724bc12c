"""Apply the rule for shipped defaults (docs/defaults.md, ``mmrec.experiments.rule``) to the
committed results tables named in ``benchmarks/defaults_of_record.yaml``.

Run from the repo root:  .venv/bin/python -m benchmarks.defaults_of_record
Writes benchmarks/results/defaults_of_record.md: per setting, each category's validation and
test figures (mean over seeds), its standardised validation change, the paired test interval
where both sides' per-user results are in the store, and the verdict. Reads only committed
tables (and the store, optionally): nothing trains.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import yaml

from mmrec.experiments.rule import CLIP, MIN_SPREAD, Paired, Side, Verdict, judge

SPEC = Path("benchmarks/defaults_of_record.yaml")


def read_side(path: str, variant: str) -> tuple[Side, list[str]]:
    """Per-seed validation and test NDCG@10 of ``variant`` in a results.csv, and the run keys."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"defaults_of_record: {path} not found (run its experiment first)")
    with file.open() as f:
        rows = [r for r in csv.DictReader(f) if r["variant"] == variant]
    if not rows:
        report = file.with_name("results.md")
        missing = [
            line for line in (report.read_text().splitlines() if report.is_file() else [])
            if line.startswith("Missing runs") and f" {variant} seed " in f" {line}"
        ]  # fmt: skip
        if not missing:  # a variant the table never planned: a typo in the spec
            raise SystemExit(f"defaults_of_record: no row {variant!r} in {path}")
        return Side(val=(), test=()), []  # planned, none trained yet: evidence missing
    rows.sort(key=lambda r: int(r["seed"]))
    val = tuple(float(r["val_ndcg@10"]) if r["val_ndcg@10"] else np.nan for r in rows)
    side = Side(val=val, test=tuple(float(r["ndcg@10"]) for r in rows))
    return side, [r["key"] for r in rows]


def paired_from_store(store: Path, default_keys: list[str], setting_keys: list[str]):
    """Paired test (setting - default) on per-user NDCG@10 averaged over seeds, when every
    key's per-user table is stored; else None."""
    import polars as pl

    from mmrec.experiments.stats import paired_test

    files = [store / f"{k}.users.parquet" for k in (*default_keys, *setting_keys)]
    if not default_keys or not setting_keys or not all(f.is_file() for f in files):
        return None  # a side with no run trained yet has nothing to pair

    def means(keys: list[str]) -> pl.DataFrame:
        frames = [pl.read_parquet(store / f"{k}.users.parquet") for k in keys]
        stacked = pl.concat([f.select("user_idx", "ndcg@10") for f in frames])
        return stacked.group_by("user_idx").agg(pl.col("ndcg@10").mean()).sort("user_idx")

    both = means(default_keys).join(means(setting_keys), on="user_idx", suffix="_s")
    both = both.sort("user_idx")  # the bootstrap draws by row: one order, one interval
    r = paired_test(both["ndcg@10"].to_numpy(), both["ndcg@10_s"].to_numpy())
    return Paired(r.mean_diff, r.ci_low, r.ci_high)


def verdict_lines(decision: dict, verdict: Verdict) -> list[str]:
    lines = [
        f"### {decision['setting']}",
        "",
        f"Against: {decision['default']}. **{'Default' if verdict.wins else 'Opt-in'}**: "
        f"{verdict.reason}.",
        "",
        "| category | seeds | val default | val setting | spread | change (spreads) "
        "| test default | test setting | paired test (setting - default) | veto |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def num(x: float, form: str = ".4f") -> str:
        return "—" if np.isnan(x) else format(x, form)  # a side with no run trained yet

    for c in verdict.categories:
        paired = (
            f"{c.paired.difference:+.4f} [{c.paired.low:+.4f}, {c.paired.high:+.4f}]"
            if c.paired else "per-user results not stored" if c.seeds else "not trained yet"
        )  # fmt: skip
        lines.append(
            f"| {c.category} | {c.seeds} | {num(c.val_default)} | {num(c.val_setting)} | "
            f"{num(c.spread)} | {num(c.change, '+.2f')} | {num(c.test_default)} | "
            f"{num(c.test_setting)} | {paired} | {c.veto or 'none'} |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(SPEC), help="the decisions file (YAML)")
    parser.add_argument("--out", default=None, help="markdown to write (default: the spec's out)")
    args = parser.parse_args(argv)
    spec = yaml.safe_load(Path(args.spec).read_text())
    store = Path(spec.get("store", "runs/experiments/store"))
    lines = [
        "# Defaults of record: the rule applied",
        "",
        f"Made by `.venv/bin/python -m benchmarks.defaults_of_record` from `{args.spec}` (the",
        "committed results tables it names; nothing trains). Rule: docs/defaults.md. Change =",
        "(mean validation NDCG@10 of the setting - of the default) / the default's seed spread",
        f"(std over seeds, at least {MIN_SPREAD}), clipped to [-{CLIP:g}, +{CLIP:g}]; the setting",
        "wins when the mean change over the categories is above zero and no category vetoes on",
        "test.",
        "",
    ]
    for decision in spec["decisions"]:
        required = spec[decision["categories"]]
        evidence = {}
        for category, sides in decision["evidence"].items():
            default, dkeys = read_side(*sides["default"])
            setting, skeys = read_side(*sides["setting"])
            paired = None
            if len(dkeys) == len(skeys):
                paired = paired_from_store(store, dkeys, skeys)
            evidence[category] = (default, setting, paired)
        verdict = judge(evidence, required)
        lines += verdict_lines(decision, verdict)
        status = "DEFAULT" if verdict.wins else "opt-in "
        print(f"{status}  {decision['setting']}: {verdict.reason}")
    out = Path(args.out or spec["out"])
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
