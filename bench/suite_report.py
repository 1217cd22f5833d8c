"""Report of bench/suite.py: ``suite.csv`` (one row per method and category) and ``suite.md`` (tables,
done-checks and notes, every sentence computed from the rows)."""
from __future__ import annotations

import csv
import platform
import time
from pathlib import Path

import numpy as np

DEFAULT = "linewatch default"
FIXED = "linewatch configured, no self-configuration (stride 16, pool 3, top-20, whitened 0.3, 8 blocks)"
EARLIER = "linewatch earlier default (as FIXED but whitened 0.05, no benign copies)"
KNN = "kNN patch (strides 8+16, max, no coreset)"
PADIM = "PaDiM-like"
GLOBAL_HIST = "colour histogram + ECOD"
GLOBAL_STATS = "image statistics + IsolationForest"
ORDER = (DEFAULT, FIXED, EARLIER, KNN, PADIM, GLOBAL_HIST, GLOBAL_STATS)
KNN_MARGIN = 0.005        # done-check: default AUROC >= kNN - this, per category
IID_BAND = (0.5, 2.0)     # done-check: iid FAR within these multiples of the target ...
IID_MIN_GOOD = 100        # ... on categories with at least this many good test images
SHIFT_MAX = 10.0          # done-check: shifted FAR <= this multiple of the target
FAR_KEYS = ("far_iid_noval", "far_iid_val", "far_shifted_noval", "far_shifted_val")
CSV_KEYS = ("method", "category", "half", "family", "image_auroc", "auroc_ds", "auroc_own", "auroc_other",
            *FAR_KEYS, "threshold_noval", "threshold_val", "n_train", "n_test_good", "n_defect", "n_shifted",
            "n_validation", "fit_seconds", "score_seconds", "selection", "note")


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_KEYS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


def _f(v, fmt: str = ".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def _pct(v) -> str:
    return _f(100 * v if isinstance(v, float) else v, ".1f")


def _mean(values) -> float:
    v = [x for x in values if not np.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


class Table:
    """The rows indexed by (method, category), with the categories split into halves."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.by = {(r["method"], r["category"]): r for r in rows}
        cats = list(dict.fromkeys(r["category"] for r in rows))
        self.half = {r["category"]: r["half"] for r in rows}
        self.dev = [c for c in cats if self.half[c] == "dev"]
        self.confirm = [c for c in cats if self.half[c] != "dev"]
        self.categories = self.dev + self.confirm
        seen = list(dict.fromkeys(r["method"] for r in rows))
        self.methods = [m for m in ORDER if m in seen] + [m for m in seen if m not in ORDER]

    def get(self, method: str, cat: str, key: str = "image_auroc") -> float:
        r = self.by.get((method, cat))
        return float("nan") if r is None or r.get(key) in (None, "") else r[key]

    def mean(self, method: str, cats: list[str], key: str = "image_auroc") -> float:
        return _mean([self.get(method, c, key) for c in cats])

    def minimum(self, method: str) -> float:
        v = [self.get(method, c) for c in self.categories]
        v = [x for x in v if not np.isnan(x)]
        return min(v) if v else float("nan")

    def leader(self, cats: list[str]) -> list[tuple[str, float]]:
        """Methods by mean AUROC over ``cats``, best first (methods without every category left out)."""
        full = [m for m in self.methods if all(not np.isnan(self.get(m, c)) for c in cats)]
        return sorted(((m, self.mean(m, cats)) for m in full), key=lambda x: -x[1])


def header(t: Table, meta: dict) -> list[str]:
    quick = meta["spec"] != "full"
    title = "# Broad accuracy suite" + (" — QUICK spec (a smoke run, not the measurement)" if quick else "")
    ls, le = (" / ".join(f"{x:.2f}" for x in meta[k]) for k in ("load_start", "load_end"))
    cmd = " ".join(["python bench/suite.py", *meta["argv"]])
    L = [title, "",
         f"Produced by `{cmd}` (`make bench-suite{'-quick' if quick else ''}`) on {time.strftime('%Y-%m-%d')}, "
         f"{platform.machine()}, {meta['threads']} threads, in {meta['minutes']:.1f} min. Machine load average "
         f"(1 / 5 / 15 min) at the start {ls}, at the end {le}. Data spec: **{meta['spec']}** "
         f"(`{meta['spec_repr']}`), {len(t.dev)} DEV and {len(t.confirm)} CONFIRM categories. "
         f"{meta['peer_note']}. Every method is fitted on good images only; target false-alarm rate "
         f"{meta['target']:.0%}.", "",
         "Seconds per method, all categories (fit on the training images, including any cross-fitting, plus "
         "scoring test/, shifted/good and validation/good):", "",
         "| method | seconds |", "|---|---|"]
    L += [f"| {m} | {meta['seconds'].get(m, float('nan')):.0f} |" for m in t.methods]
    return L


def _label(m: str, meta: dict) -> str:
    if m == FIXED and not meta["fixed_differs"]:
        return f"{m} (= default: no self-configuration in this linewatch)"
    return f"**{m}**" if m == DEFAULT else m


def auroc_table(t: Table, meta: dict) -> list[str]:
    cols = [f"{c} (dev)" for c in t.dev] + [f"{c} (confirm)" for c in t.confirm]
    L = ["", "## Image AUROC", "",
         "test/good against every defect type of the category. Columns: DEV categories, then CONFIRM.", "",
         "| method | " + " | ".join(cols) + " | dev mean | confirm mean | min |",
         "|---|" + "---|" * (len(cols) + 3)]
    for m in t.methods:
        L.append(f"| {_label(m, meta)} | " + " | ".join(_f(t.get(m, c)) for c in t.categories)
                 + f" | {_f(t.mean(m, t.dev))} | {_f(t.mean(m, t.confirm))} | {_f(t.minimum(m))} |")
    chosen = [t.by.get((DEFAULT, c), {}).get("selection", "") for c in t.categories]
    if any(chosen):
        L.append("| *default: chosen configuration* | " + " | ".join(s or "–" for s in chosen) + " | | | |")
    L += ["", "AUROC per defect source, mean over the half's categories (ds = defect-synthesis, own = own "
          "drawing, other = other-digit):", ""]
    srcs = [s for s in ("ds", "own", "other")
            if any(not np.isnan(t.get(m, c, f"auroc_{s}")) for m in t.methods for c in t.categories)]
    heads = [f"{h} {s}" for h in ("dev", "confirm") for s in srcs]
    L += ["| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    for m in t.methods:
        vals = [t.mean(m, cats, f"auroc_{s}") for cats in (t.dev, t.confirm) for s in srcs]
        L.append(f"| {m} | " + " | ".join(_f(v) for v in vals) + " |")
    return L


def far_table(t: Table, meta: dict) -> list[str]:
    methods = [m for m in (DEFAULT, FIXED, KNN) if m in t.methods]
    short = {DEFAULT: "default", FIXED: "fixed", KNN: "kNN"}
    heads = [f"{short[m]} {w}" for m in methods for w in ("iid no-val", "iid val", "shifted no-val", "shifted val")]
    L = ["", f"## False-alarm rate (%) at the {meta['target']:.0%} target", "",
         "iid = test/good, shifted = shifted/good (another region, JPEG 75, brightness ±10 %, blur, 2 px shift). "
         "no-val: the threshold found from the training images alone (linewatch: the bundle's cross-fitted "
         "threshold; kNN: conformal on 5-fold cross-fitted training scores). val: split-conformal on the "
         "validation/good scores under the same model, which is exactly what `linewatch train` does when the "
         "dataset has a validation/good folder.", "",
         "| category | half | good test | shifted | " + " | ".join(heads) + " |",
         "|---|---|---|---|" + "---|" * len(heads)]
    for c in t.categories:
        vals = [_pct(t.get(m, c, k)) for m in methods for k in FAR_KEYS]
        L.append(f"| {c} | {t.half[c]} | {_f(t.get(DEFAULT, c, 'n_test_good'), 'd')} | "
                 f"{_f(t.get(DEFAULT, c, 'n_shifted'), 'd')} | " + " | ".join(vals) + " |")
    others = [m for m in t.methods if m not in methods]
    if others:
        L += ["", "Mean false-alarm rate (%) over all categories of the other rows (anomalib: its own "
              "threshold, test/good only):", "",
              "| method | iid no-val | iid val | shifted no-val | shifted val |", "|---|---|---|---|---|"]
        L += [f"| {m} | " + " | ".join(_pct(t.mean(m, t.categories, k)) for k in FAR_KEYS) + " |" for m in others]
    return L


def _ok(flag: bool | None) -> str:
    return "n/a" if flag is None else ("yes" if flag else "**no**")


def far_checks(t: Table, c: str, target: float) -> dict[str, bool | None]:
    """Per FAR column of the default row: inside its band (None: not checked)."""
    n = t.get(DEFAULT, c, "n_test_good")
    out = {}
    for k in FAR_KEYS:
        v = t.get(DEFAULT, c, k)
        if np.isnan(v) or (k.startswith("far_iid") and (np.isnan(n) or n < IID_MIN_GOOD)):
            out[k] = None
        elif k.startswith("far_iid"):
            out[k] = IID_BAND[0] * target <= v <= IID_BAND[1] * target
        else:
            out[k] = v <= SHIFT_MAX * target
    return out


def done_checks(t: Table, meta: dict) -> list[str]:
    target = meta["target"]
    L = ["", "## Done-checks (computed from the numbers above)", "",
         f"Per category: default AUROC ≥ kNN − {KNN_MARGIN} (gap = default − kNN); the default row's false-alarm "
         f"rates within {IID_BAND[0]:g}–{IID_BAND[1]:g}× the target on iid images (only on categories with "
         f"≥ {IID_MIN_GOOD} good test images, else n/a) and ≤ {SHIFT_MAX:g}× on shifted images.", "",
         "| category | half | gap to kNN | ≥ kNN − 0.005 | iid no-val | iid val | shifted no-val | shifted val |",
         "|---|---|---|---|---|---|---|---|"]
    tally = {k: [0, 0] for k in ("knn", *FAR_KEYS)}
    for c in t.categories:
        gap = t.get(DEFAULT, c) - t.get(KNN, c)
        knn_ok = None if np.isnan(gap) else bool(gap >= -KNN_MARGIN)
        checks = {"knn": knn_ok, **far_checks(t, c, target)}
        for k, v in checks.items():
            if v is not None:
                tally[k][0] += v
                tally[k][1] += 1
        L.append(f"| {c} | {t.half[c]} | {_f(gap, '+.3f')} | {_ok(knn_ok)} | "
                 + " | ".join(f"{_ok(checks[k])} ({_pct(t.get(DEFAULT, c, k))} %)" for k in FAR_KEYS) + " |")
    L += ["", "Passed: " + "; ".join(f"{name} {tally[k][0]}/{tally[k][1]}" for k, name in
                                     (("knn", "≥ kNN − 0.005"), ("far_iid_noval", "iid no-val"),
                                      ("far_iid_val", "iid val"), ("far_shifted_noval", "shifted no-val"),
                                      ("far_shifted_val", "shifted val"))) + "."]
    L.append(confirm_check(t))
    return L


def confirm_check(t: Table) -> str:
    if not t.confirm or DEFAULT not in t.methods:
        return "- Confirm mean of the default ≥ every other row: n/a (no CONFIRM categories in this run)."
    mine = t.mean(DEFAULT, t.confirm)
    above = [(m, v) for m, v in t.leader(t.confirm) if m != DEFAULT and v > mine]
    if not above:
        return f"- Confirm mean of the default ≥ every other row: **yes** ({mine:.3f})."
    return (f"- Confirm mean of the default ≥ every other row: **no** ({mine:.3f}; above it: "
            + ", ".join(f"{m} {v:.3f}" for m, v in above) + ").")


def notes(t: Table, meta: dict) -> list[str]:
    """The generated paragraph: which rows lead each half, where the default loses to kNN."""
    s = []
    for half, cats in (("DEV", t.dev), ("CONFIRM", t.confirm)):
        lead = t.leader(cats)
        if lead:
            s.append(f"{half} half: the highest mean image AUROC is {lead[0][1]:.3f} ({lead[0][0]})"
                     + (f", then {lead[1][1]:.3f} ({lead[1][0]})" if len(lead) > 1 else "") + ".")
    if DEFAULT in t.methods and KNN in t.methods:
        gaps = [(c, t.get(DEFAULT, c) - t.get(KNN, c)) for c in t.categories]
        lose = sorted((g for g in gaps if g[1] < 0), key=lambda g: g[1])
        if lose:
            s.append(f"linewatch default scores below kNN on {len(lose)} of {len(gaps)} categories: "
                     + ", ".join(f"{c} by {-g:.3f}" for c, g in lose) + ".")
        else:
            s.append(f"linewatch default scores at or above kNN on all {len(gaps)} categories.")
    if FIXED in t.methods and meta["fixed_differs"]:
        d = [t.mean(DEFAULT, h) - t.mean(FIXED, h) for h in (t.dev, t.confirm)]
        s.append(f"Default minus fixed, mean AUROC: DEV {_f(d[0], '+.3f')}, CONFIRM {_f(d[1], '+.3f')}.")
    elif FIXED in t.methods:
        s.append("The fixed row repeats the default's bundle: this linewatch has no self-configuration.")
    method = ("Thresholds: the linewatch rows' no-validation threshold is the bundle's own (trained on a view of "
              "the category without validation/, so it is cross-conformal over the training groups); the "
              "baselines' is conformal on 5-fold cross-fitted training-image scores; every with-validation "
              "threshold is split-conformal on validation/good scores under the same model, as `linewatch "
              "train` does with a validation/good folder.")
    if meta["peers_ran"]:
        method += (" anomalib rows use anomalib's own F1-adaptive threshold tuned on the labelled test set (so "
                   "their false-alarm rates are optimistic and not comparable), and score test/ only.")
    return ["", "## Notes", "", " ".join(s), "", method]


def write_markdown(path: Path, rows: list[dict], meta: dict) -> None:
    t = Table(rows)
    L = header(t, meta) + auroc_table(t, meta) + far_table(t, meta) + done_checks(t, meta) + notes(t, meta)
    path.write_text("\n".join(L) + "\n")
