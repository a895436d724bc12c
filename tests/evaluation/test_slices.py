"""Slice tables and the month plot leave no process-wide state behind."""

from __future__ import annotations

import matplotlib

from mmrec.evaluation.slices import plot_metric_by_month


def test_month_plot_does_not_switch_the_matplotlib_backend(tmp_path):
    matplotlib.use("svg")  # whatever the user's program chose
    results = {
        "test/slice/month=2014-01/ndcg@10": 0.1,
        "test/slice/month=2014-01/users": 5.0,
        "test/slice/month=2014-02/ndcg@10": 0.3,
        "test/slice/month=2014-02/users": 7.0,
    }
    out = plot_metric_by_month(results, tmp_path / "m.png", "ndcg@10")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend().lower() == "svg"
