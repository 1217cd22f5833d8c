"""Markdown report of bench/accuracy.py: tables from the result rows, and a verdict computed from them."""
from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

DEFAULT = "linewatch default (level 1, whitened, bank 1024, Lite0 cut after block 7)"
FAR_TARGET = 0.01


def _mixed(rows, kind=None):
    return [r for r in rows if r["subset"] == "mixed" and (kind is None or r["kind"] == kind)]


def _get(rows, method, case, key="image_auroc"):
    for r in rows:
        if r["method"] == method and r["case"] == case and r["subset"] == "mixed":
            return r.get(key, float("nan"))
    return float("nan")


def _f(v, fmt=".3f"):
    return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def _methods(rows):
    """Method names in first-seen order, linewatch's default first."""
    seen = []
    for r in rows:
        if r["method"] not in seen:
            seen.append(r["method"])
    return sorted(seen, key=lambda m: m != DEFAULT)


def summary(rows) -> dict[str, dict]:
    """Per method: per-texture AUROC, means over textures and MNIST digits, pixel metrics, FAR, times."""
    textures = sorted({r["case"] for r in _mixed(rows, "texture")})
    digits = sorted({r["case"] for r in _mixed(rows, "mnist")})
    out = {}
    for m in _methods(rows):
        tex = [_get(rows, m, c) for c in textures]
        mn = [_get(rows, m, c) for c in digits]
        out[m] = {
            "tex": dict(zip(textures, tex)),
            "tex_mean": float(np.mean(tex)) if tex else float("nan"),
            "mnist_mean": float(np.mean(mn)) if mn else float("nan"),
            "pixel_auroc": float(np.mean([_get(rows, m, c, "pixel_auroc") for c in textures])) if tex else float("nan"),
            "aupro": float(np.mean([_get(rows, m, c, "aupro") for c in textures])) if tex else float("nan"),
            "f1": float(np.mean([_get(rows, m, c, "f1") for c in textures])) if tex else float("nan"),
            "far": {c: _get(rows, m, c, "false_alarm_rate") for c in textures},
            "far_cross_fitted": {c: _get(rows, m, c, "far_cross_fitted") for c in textures},
            "n_good": {c: _get(rows, m, c, "n_good") for c in textures},
            "fit_s": float(np.mean([_get(rows, m, c, "fit_seconds") for c in textures])) if tex else float("nan"),
            "ms": float(np.mean([_get(rows, m, c, "ms_per_image") for c in textures])) if tex else float("nan"),
            "mnist_fit_s": float(np.mean([_get(rows, m, c, "fit_seconds") for c in digits])) if mn else float("nan"),
            "mnist_ms": float(np.mean([_get(rows, m, c, "ms_per_image") for c in digits])) if mn else float("nan"),
        }
    return out


def verdict(s: dict[str, dict]) -> list[str]:
    """Where linewatch's default leads and where it does not (by how much), computed from the table."""
    if DEFAULT not in s:
        return []
    lines, me = [], s[DEFAULT]
    others = {m: v for m, v in s.items() if m != DEFAULT}
    checks = [("mean image AUROC over the textures", lambda v: v["tex_mean"]),
              ("mean image AUROC over the MNIST digits", lambda v: v["mnist_mean"])]
    checks += [(f"image AUROC on {t}", (lambda t: lambda v: v["tex"].get(t, float("nan")))(t)) for t in me["tex"]]
    for what, key in checks:
        mine = key(me)
        if np.isnan(mine):
            continue
        best_m, best = max(((m, key(v)) for m, v in others.items() if not np.isnan(key(v))),
                           key=lambda x: x[1], default=(None, float("nan")))
        if best_m is None or mine >= best:
            lines.append(f"- {what}: **linewatch leads** ({mine:.3f}; next best {best_m} {_f(best)}).")
        else:
            lines.append(f"- {what}: linewatch **trails** {best_m} by {best - mine:.3f} ({mine:.3f} vs {best:.3f}).")
    for t, far in me["far"].items():
        if np.isnan(far):
            continue
        ok = FAR_TARGET / 2 <= far <= 2 * FAR_TARGET
        n = me["n_good"][t]
        cf = me["far_cross_fitted"].get(t, float("nan"))
        lines.append(f"- false alarms on {t}: {far:.2%} of {int(n)} good test images against the 1 % target: "
                     f"{'within' if ok else '**outside**'} a factor of 2 (calibrated on the validation crops; "
                     f"the cross-fitted threshold from the training crops alone would give {_f(cf, '.1%')}).")
    return lines


def write_markdown(path: Path, rows: list[dict], args, minutes: float, peers_ran: bool) -> None:
    s = summary(rows)
    textures = sorted({r["case"] for r in _mixed(rows, "texture")})
    digits = sorted({r["case"] for r in _mixed(rows, "mnist")})
    L = ["# Accuracy: linewatch against baselines and anomalib, same data, same run", "",
         f"Produced by `python bench/accuracy.py{' --quick' if args.quick else ''}` (`make bench-accuracy`) on "
         f"{platform.machine()} with {args.threads} threads, {time.strftime('%Y-%m-%d')}, in {minutes:.0f} min. "
         "Every method is fitted on good images only. "
         + ("anomalib ran in its own env (bench/peers)." if peers_ran else
            "**anomalib did not run** (its env is absent or --no-peers)."), ""]
    L += ["## Summary", "",
          "Image AUROC on each texture's mixed test set (all defect types), means over textures and over the "
          "ten MNIST one-class digits; pixel AUROC, AUPRO (FPR ≤ 0.3) and F1 averaged over textures; the "
          "false-alarm rate reached on each texture's good test images at the method's threshold (target "
          "1 %); fit seconds and inference ms per image on the textures.", "",
          "| method | " + " | ".join(textures) + " | textures mean | MNIST mean | pixel AUROC | AUPRO | F1 | "
          + " | ".join(f"FAR {t}" for t in textures) + " | fit s | ms / image |",
          "|---|" + "---|" * (len(textures) * 2 + 7)]
    for m, v in s.items():
        name = f"**{m}**" if m == DEFAULT else m
        L.append(f"| {name} | " + " | ".join(_f(v["tex"][t]) for t in textures)
                 + f" | {_f(v['tex_mean'])} | {_f(v['mnist_mean'])} | {_f(v['pixel_auroc'])} | {_f(v['aupro'])} | "
                 f"{_f(v['f1'])} | " + " | ".join(_f(v["far"][t], ".1%") for t in textures)
                 + f" | {_f(v['fit_s'], '.0f')} | {_f(v['ms'], '.1f')} |")
    L += ["", "## Verdict (computed from the table above)", ""] + verdict(s)
    types = sorted({r["subset"] for r in rows if r["kind"] == "texture" and r["subset"] != "mixed"})
    for t in textures:
        L += ["", f"## {t}: image AUROC per defect type", "",
              "| method | " + " | ".join(types) + " | mixed | defects flagged |", "|---|" + "---|" * (len(types) + 2)]
        for m in s:
            per = {r["subset"]: r["image_auroc"] for r in rows if r["method"] == m and r["case"] == t}
            L.append(f"| {m} | " + " | ".join(_f(per.get(x)) for x in types)
                     + f" | {_f(per.get('mixed'))} | {_f(_get(rows, m, t, 'detected'), '.1%')} |")
    if digits:
        L += ["", "## MNIST one-class: image AUROC per normal digit", "",
              "| method | " + " | ".join(d.split("-")[1] for d in digits) + " | mean | fit s | ms / image |",
              "|---|" + "---|" * (len(digits) + 3)]
        for m, v in s.items():
            L.append(f"| {m} | " + " | ".join(_f(_get(rows, m, d)) for d in digits)
                     + f" | {_f(v['mnist_mean'])} | {_f(v['mnist_fit_s'], '.1f')} | {_f(v['mnist_ms'], '.1f')} |")
    notes = Path(__file__).with_name("accuracy_notes.md")
    if notes.is_file() and not args.quick:
        L += ["", notes.read_text().rstrip()]
    path.write_text("\n".join(L) + "\n")
