"""Comparing two evaluation reports (`predictions.jsonl`, `metrics.json`) of the same videos.

Reports of runs that batch differently (one host vs two, another device count) promise
the same videos, labels, view counts and file names exactly, and the scores within
`SCORE_ATOL`: XLA:CPU's float32 results may change in the last bits with a batch's
composition on some CPUs (seen on AVX2-only machines). A top-5 class or a metric may
differ only where the scores involved are within that tolerance of a tie.
"""

import json

SCORE_ATOL = 1e-5


def _rows(folder):
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def _same_ranking(a, b, atol):
    """Top-5 lists of one video: each class's score within `atol`; classes may trade places
    (or the 5th place) only with a class whose score is within 2 atol of theirs."""
    for row, other in ((a, b), (b, a)):
        other_scores = dict(zip(other["top5"], other["top5_scores"]))
        for rank, (cls, score) in enumerate(zip(row["top5"], row["top5_scores"])):
            if cls in other_scores:
                assert abs(score - other_scores[cls]) <= atol, (row, other)
            if other["top5"][rank] != cls:      # a swap: only between near-equal scores
                assert abs(score - other["top5_scores"][rank]) <= 2 * atol, (row, other)
            if cls not in other_scores:         # fell out at the 5th place: a tie there
                assert abs(score - min(other_scores.values())) <= 2 * atol, (row, other)


def _near_top1_ties(rows, atol):
    """Videos whose top-1 and top-2 scores are within 2 atol: their top-1 may flip."""
    return [r for r in rows if len(r["top5_scores"]) > 1
            and r["top5_scores"][0] - r["top5_scores"][1] <= 2 * atol]


def assert_same_report(a, b, atol=SCORE_ATOL):
    """Reports in folders `a` and `b` agree: exactly on everything but the scores, which
    agree within `atol`; an accuracy may differ by the share of its videos whose top-1 is
    a near-tie in either report (none in practice: then accuracies are equal)."""
    rows_a, rows_b = _rows(a), _rows(b)
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b):
        assert _exact_part(ra) == _exact_part(rb)
        _same_ranking(ra, rb, atol)
    ma, mb = (json.loads((f / "metrics.json").read_text()) for f in (a, b))
    assert sorted(ma) == sorted(mb)
    ties = _near_top1_ties(rows_a, atol) + _near_top1_ties(rows_b, atol)
    labelled = [r for r in rows_a if r["label"] >= 0]
    slack = 100.0 * len(ties) / max(len(labelled), 1)
    class_slack = [100.0 * sum(r["label"] == c for r in ties)
                   / max(sum(r["label"] == c for r in labelled), 1)
                   for c in range(len(ma.get("per_class_accuracy", [])))]
    for key, value in ma.items():
        if key == "per_class_accuracy":
            assert [v is None for v in value] == [v is None for v in mb[key]], key
            for v, w, s in zip(value, mb[key], class_slack):
                assert v is None or abs(v - w) <= s + 1e-9, key
        elif isinstance(value, float):
            assert abs(value - mb[key]) <= slack + 1e-9, key
        else:
            assert mb[key] == value, key


def _exact_part(row):
    return {k: v for k, v in row.items() if k not in ("top5", "top5_scores", "top5_names")}
