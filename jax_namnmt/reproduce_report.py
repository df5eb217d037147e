"""``docs/results.md``, ``docs/results.json`` and the figures from a reproduction's report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jax_namnmt.analysis.plots import pyplot, save_figure
from jax_namnmt.config import ReproduceConfig, corpus_splits
from jax_namnmt.method.masks import parse_name
from jax_namnmt.training.checkpoint import save_json

SHOWN = ("pretrained", "multilingual", "method_te", "method_av", "random", "k0")
LABELS = {"pretrained": "pre-trained start (paper's control)", "multilingual": "multilingual, same steps (fair control)",
          "method_te": "method_te", "method_av": "method_av", "random": "random masks, same counts",
          "k0": "method_te masks with k = 0"}


def _pairs(setting: dict) -> list[str]:
    return [c for c in next(iter(setting["bleu"].values()))["mean"] if c != "avg"]


def _bleu_table(setting: dict, metric: str = "bleu") -> list[str]:
    cols = _pairs(setting) + ["avg"]
    lines = ["| system | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for system in [s for s in SHOWN if s in setting[metric]]:
        row = setting[metric][system]
        n = len(row["seeds"])
        cells = [f"{row['mean'][c]:.2f}" + (f" ± {row['std'][c]:.2f}" if n > 1 else "") for c in cols]
        lines.append(f"| {LABELS[system]} | {n} | " + " | ".join(cells) + " |")
    return lines


def _significance_table(setting: dict) -> list[str]:
    cols = _pairs(setting) + ["avg"]
    lines = ["| method_te against | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for control, row in setting["significance"].items():
        cells = [f"{row[c]['diff']:+.2f} (p={row[c]['p']:.3f})" for c in cols]
        lines.append(f"| {LABELS.get(control, control)} | " + " | ".join(cells) + " |")
    return lines


def _step0_table(setting: dict) -> list[str]:
    grid = setting["step0"]
    base = grid["none"]["nll"]
    lines = ["| scoring (loss-normalisation-modules-rho-k) | masked valid NLL at step 0 | cost (nats/token) | "
             "neurons kept (min-max over pairs) | own importance removed (min-max) |", "|---|---|---|---|---|"]
    for tag, row in sorted(((t, r) for t, r in grid.items() if t != "none"), key=lambda x: x[1]["nll"]):
        kept = [v["kept"] for v in row["masks"].values()]
        removed = [v["importance_removed"] for v in row["masks"].values()]
        lines.append(f"| {tag} | {row['nll']:.4f} | {row['nll'] - base:+.4f} | {min(kept):.1%}-{max(kept):.1%} | "
                     f"{min(removed):.2%}-{max(removed):.2%} |")
    return [f"Unmasked start: {base:.4f} nats/token."] + [""] + lines


def _per_pair_table(setting: dict) -> list[str]:
    tag = setting["chosen"]["tag"]
    grid = setting["step0"]
    pairs = _pairs(setting)
    rows = [("neurons kept", [grid[tag]["masks"][p]["kept"] for p in pairs], "{:.1%}"),
            ("own importance removed", [grid[tag]["masks"][p]["importance_removed"] for p in pairs], "{:.2%}"),
            ("valid NLL, unmasked", [grid["none"][f"nll_{p}"] for p in pairs], "{:.3f}"),
            ("valid NLL, masked, step 0", [grid[tag][f"nll_{p}"] for p in pairs], "{:.3f}")]
    te = setting["bleu"]["method_te"]["mean"]
    ml = setting["bleu"]["multilingual"]["mean"]
    rows.append(("BLEU method_te - multilingual", [te[p] - ml[p] for p in pairs], "{:+.2f}"))
    lines = ["| per pair | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
    lines += [f"| {name} | " + " | ".join(fmt.format(v) for v in values) + " |" for name, values, fmt in rows]
    return lines


def _module_table(setting: dict) -> list[str]:
    """Per kind of module (mean over layers): share of neurons kept and of the pair's own importance
    removed by the chosen masks."""
    report = setting.get("chosen_masks")
    if not report:
        return []
    pairs = _pairs(setting)
    kinds: dict[str, list[str]] = {}
    for name in report["kept"]:
        part = parse_name(name)
        kinds.setdefault(f"{part.stack}/{part.module}", []).append(name)
    lines = ["| module (all layers) | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
    for kind, names in kinds.items():
        cells = []
        for p in pairs:
            kept = np.mean([report["kept"][n][p] for n in names])
            removed = np.mean([report["importance_removed"][n][p] for n in names])
            cells.append(f"{kept:.0%} / {removed:.1%}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return ["", "Per module, neurons kept / own importance removed (chosen masks, mean over layers):", ""] + lines


def _final_nll(setting: dict, system: str) -> float | None:
    curves = setting["curves"].get(system) or {}
    finals = [curve[-1][1] for curve in curves.values() if curve]
    return float(np.mean(finals)) if finals else None


def diagnosis(setting: dict) -> list[str]:
    """The reading of one setting's numbers, as sentences computed from them."""
    tag, grid, bleu = setting["chosen"]["tag"], setting["step0"], setting["bleu"]
    start, masked = grid["none"]["nll"], grid[tag]["nll"]
    out = [f"Masking alone (the chosen masks, before any update) raises the validation NLL from {start:.4f} "
           f"to {masked:.4f} nats/token ({masked - start:+.4f})."]
    ml, te = _final_nll(setting, "multilingual"), _final_nll(setting, "method_te")
    if ml is not None and te is not None:
        out.append(f"After {setting['curves']['method_te'][next(iter(setting['curves']['method_te']))][-1][0]} "
                   f"fine-tuning steps the validation NLL is {te:.4f} for method_te and {ml:.4f} for the "
                   f"equal-steps multilingual run (mean over seeds; {te - ml:+.4f}): the masked model "
                   + ("has not caught up with" if te > ml else "is ahead of") + " the unmasked one.")
    gain = bleu["multilingual"]["mean"]["avg"] - bleu["pretrained"]["mean"]["avg"]
    out.append(f"Training the start model on for the same steps without masks moves its test BLEU by {gain:+.2f}; "
               f"method_te against it: {bleu['method_te']['mean']['avg'] - bleu['multilingual']['mean']['avg']:+.2f}.")
    if "random" in bleu:
        curve = next(iter(setting["curves"]["random"].values()))
        rnd0, rnd = curve[0][1], curve[-1][1]
        out.append(f"Random masks with the same counts cost {rnd0 - start:+.4f} nats at step 0 (importance-chosen: "
                   f"{masked - start:+.4f}) and end at validation NLL {rnd:.4f}, test BLEU "
                   f"{bleu['random']['mean']['avg']:.2f} (method_te, same seed: "
                   f"{bleu['method_te']['seeds'][str(next(iter(setting['curves']['random'])))]['avg']:.2f}).")
    return out


def _figure(name: str, setting: dict, out: Path) -> Path:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    colors = {"multilingual": "tab:blue", "method_te": "tab:red", "method_av": "tab:orange", "random": "tab:gray",
              "k0": "tab:green"}
    for system, by_seed in setting["curves"].items():
        for i, (seed, curve) in enumerate(by_seed.items()):
            steps, nll = zip(*curve)
            left.plot(steps, nll, color=colors.get(system, "k"), alpha=0.8, marker=".",
                      label=LABELS.get(system, system) if i == 0 else None)
    left.axhline(setting["step0"]["none"]["nll"], color="k", ls=":", label="start, unmasked")
    left.set_xlabel("fine-tuning step")
    left.set_ylabel("validation NLL (nats/token)")
    left.set_title(f"{name}: validation curves (every seed)")
    left.legend(fontsize=8)
    pairs = _pairs(setting)
    tag = setting["chosen"]["tag"]
    removed = [100 * setting["step0"][tag]["masks"][p]["importance_removed"] for p in pairs]
    te, ml = setting["bleu"]["method_te"]["mean"], setting["bleu"]["multilingual"]["mean"]
    delta = [te[p] - ml[p] for p in pairs]
    right.scatter(removed, delta)
    for p, x, y in zip(pairs, removed, delta):
        right.annotate(p, (x, y), fontsize=8)
    right.axhline(0, color="k", lw=0.5)
    right.set_xlabel("% of the pair's own importance the masks remove")
    right.set_ylabel("BLEU method_te - multilingual (mean over seeds)")
    right.set_title("the cost per pair")
    fig.tight_layout()
    path = save_figure(fig, out / "figures" / f"results_{name}.png")
    plt.close(fig)
    return path


def _spearman(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1]) if len(x) > 2 else float("nan")


def summary_lines(report: dict) -> list[str]:
    """One line per setting: the method against both controls (the README quotes these)."""
    lines = []
    for name, s in report.get("settings", {}).items():
        if "significance" not in s:
            continue
        sig = s["significance"]
        te, ml, pre = (s["bleu"][k]["mean"]["avg"] for k in ("method_te", "multilingual", "pretrained"))
        lines.append(f"{name.replace('_', '-')}: method_te {te:.2f} BLEU vs the equal-steps multilingual control "
                     f"{ml:.2f} ({sig['multilingual']['avg']['diff']:+.2f}, p={sig['multilingual']['avg']['p']:.3f}) "
                     f"and the pre-trained start {pre:.2f} ({sig['pretrained']['avg']['diff']:+.2f}, "
                     f"p={sig['pretrained']['avg']['p']:.3f}); {len(s['bleu']['method_te']['seeds'])} seeds")
    return lines


def write_report(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    env, c = report["environment"], report["config"]
    # reports written before reproduce.corpus_splits existed tested on the default's split
    test_split = corpus_splits(c["reproduce"].get("corpus_splits", ReproduceConfig.corpus_splits))["test"]
    md = ["# Does allocation beat its baseline? (`python -m jax_namnmt.reproduce`)", "",
          "Written by the command below from its JSON report (`results.json` beside this file); the "
          "protocol is in the docstring of `jax_namnmt/reproduce.py`.", "",
          f"- command: `{report['command']}`", f"- date: {report.get('date', '?')}",
          f"- machine: {env['machine']} ({env['device']}); python {env['python']}, jax {env['jax']}, "
          f"flax {env['flax']}, sacrebleu {env['sacrebleu']}",
          f"- fine-tuning: {c['finetune']['steps']} steps of {c['train']['tokens_per_batch']} target tokens, peak lr "
          f"{c['finetune']['learning_rate']} after {c['finetune']['warmup_steps']} warm-up steps, dropout "
          f"{c['model']['dropout']}; seeds {c['reproduce']['seeds']}; beam {c['decode']['beam_size']}, length penalty "
          f"{c['decode']['length_penalty']}; corpus: {c['reproduce'].get('corpus') or 'the embedded Multi30k'}; test: "
          f"{test_split}, "
          f"{c['decode']['test_max_lines'] or 'all'} lines per direction",
          f"- systems: {', '.join(c['reproduce']['systems'])}"
          + (f" (first seed only: {', '.join(c['reproduce']['one_seed_systems'])})" if c['reproduce']['one_seed_systems'] else "")
          + (f"; left out: {', '.join(c['reproduce']['skip'])}" if c['reproduce'].get('skip') else "")
          + "; +TS, +Adapter and Individual need pre-training of their own and are not part of this protocol "
          "(`python -m jax_namnmt.pipeline --from-scratch --systems all` runs them)", ""]
    md += ["## Summary", ""] + [f"- {line}" for line in summary_lines(report)] + [""]
    paths = []
    for name, s in report.get("settings", {}).items():
        if "significance" not in s:
            md += [f"## {name}: not finished", ""]
            continue
        start = s["start"]
        md += [f"## {name}", "",
               f"Start: `{start['from']}` trained on for {start['steps']} steps on these pairs "
               f"({'validation NLL stopped improving' if start['converged'] else 'step cap reached, still improving'}; "
               f"NLL by step: " + ", ".join(f"{st}: {v:.4f}" for st, v in start["valid_nll"]) + f"). Wall time "
               f"{s.get('wall_s', 0) / 60:.0f} min; per phase (s): "
               + ", ".join(f"{k} {v:.0f}" for k, v in s.get("seconds", {}).items()) + ".", "",
               f"Chosen on the validation part: `{s['chosen']['tag']}` (scorings by step-0 NLL: "
               + ", ".join(f"`{t}`" for t in s["scoring_candidates"]) + "; rho/k by validation NLL after "
               "fine-tuning: " + ", ".join(f"`{t}` {v:.4f}" for t, v in s["rho_k_choice"].items()) + ").", "",
               "### Reading", ""] + [f"- {line}" for line in diagnosis(s)] + [
               "", "### BLEU (test, mean ± std over seeds)", ""] + _bleu_table(s) + [
               "", "### chrF", ""] + _bleu_table(s, "chrf") + [
               "", "### method_te minus each control (paired bootstrap over test sentences, all seeds; "
               f"{c['reproduce']['bootstrap_samples']} resamples; two-sided p)", ""] + _significance_table(s) + [
               "", f"Signature: `{s['signature']['bleu']}`; chrF `{s['signature']['chrf']}`.", "",
               "### The cost of the masks before any update (validation part)", ""] + _step0_table(s) + [
               "", "### Per pair (chosen masks)", ""] + _per_pair_table(s) + _module_table(s)
        pairs = _pairs(s)
        removed = [s["step0"][s["chosen"]["tag"]]["masks"][p]["importance_removed"] for p in pairs]
        delta = [s["bleu"]["method_te"]["mean"][p] - s["bleu"]["multilingual"]["mean"][p] for p in pairs]
        figure = _figure(name, s, out)
        paths.append(figure)
        md += ["", f"Spearman correlation, importance removed vs BLEU delta: {_spearman(removed, delta):+.2f}.", "",
               f"![validation curves and cost per pair](figures/{figure.name})", ""]
    results_md = out / "results.md"
    results_md.write_text("\n".join(md) + "\n", encoding="utf-8")
    save_json(out / "results.json", report)
    return [results_md, out / "results.json", *paths]
