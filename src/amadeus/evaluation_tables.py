"""The report of `amadeus evaluate` (amadeus.evaluate) as plain-text tables: text adherence with its
intervals, style ceilings, generation statistics, sample quality against the reference split (with its
interval, undefined values, degenerate and furthest pieces) and likelihoods."""
from __future__ import annotations

from typing import Any

from amadeus.evaluate import MODES, SCORED, TARGETS


def _cell(v: Any, width: int = 8, digits: int = 1) -> str:
    return ("-" if v is None else f"{v:.{digits}f}").rjust(width)


def _span(bounds: Any, width: int = 11, digits: int = 0) -> str:
    """[low, high] as "low-high" (or "-")."""
    if not bounds or bounds[0] is None:
        return "-".rjust(width)
    return f"{bounds[0]:.{digits}f}..{bounds[1]:.{digits}f}".rjust(width)


def _chosen(chosen_on: Any) -> str:
    """Where settings were chosen: "sampler: validation, guidance: test" from a mapping, else as it is."""
    if isinstance(chosen_on, dict):
        return ", ".join(f"{k}: {v}" for k, v in chosen_on.items())
    return str(chosen_on or "-")


def _adherence_table(report: dict[str, Any]) -> list[str]:
    """Each target and mode: the percentages, their 95 % intervals, and the paired difference with - without."""
    n, g = report["settings"]["num"], report["settings"]["guidance"]
    info = report.get("adherence_info") or {}
    lines = [f"text adherence, % of {n} pieces of the {report['split']!r} split"
             + (f" (guidance {g})" if report["text_conditioned"] else " (model has no text encoder)")
             + f", {report['settings'].get('adherence', 'amadeus')} features; settings chosen on "
             + _chosen(info.get("chosen_on")),
             f"95 % intervals: {info.get('intervals', '-')}",
             "target / mode".ljust(30) + "".join(c.rjust(12) for c in SCORED) + "   scored"]
    for target in TARGETS:
        label = "stored features" if target == "features" else "caption fields"
        for mode in MODES:
            name = f"{label} / {mode.replace('_', ' ')}"
            row = report["adherence"][target][mode]
            if row is None:
                lines.append(name.ljust(30) + "  not computed (model has no text encoder)")
                continue
            scored = report["adherence_counts"][target][mode]
            lines.append(name.ljust(30) + "".join(_cell(row.get(c), 12) for c in SCORED)
                         + "   " + " ".join(str(scored.get(c, 0)) for c in SCORED))
            ci = (report.get("adherence_ci95") or {}).get(target, {}).get(mode)
            if ci:
                lines.append("  95 % interval".ljust(30) + "".join(_span(ci.get(c), 12) for c in SCORED))
        diff = (report.get("adherence_difference") or {}).get(target)
        if diff:
            lines.append(f"{label} / with - without".ljust(30)
                         + "".join(_cell(diff[c]["difference"], 12) for c in SCORED))
            lines.append("  95 % interval (paired)".ljust(30) + "".join(_span(diff[c]["ci95"], 12) for c in SCORED))
    return lines


def _style_lines(report: dict[str, Any]) -> list[str]:
    """The time signatures of prompts and pieces, and the CS classifiers' ceilings."""
    lines = []
    meters = report.get("time_signatures") or {}
    if meters.get("prompts"):
        lines.append("time signatures (pieces): " + "; ".join(
            f"{name.replace('_', ' ')} " + ", ".join(f"{k} {v}" for k, v in meters[name].items())
            for name in ("prompts",) + MODES if meters.get(name)))
    style = report.get("style")
    for name in ("CS", "CS_no_metre"):
        if not style or not style.get(name):
            continue
        held, prompts = style[name].get("held_out") or {}, style[name]["prompt_pieces"]
        what = "the style classifier" if name == "CS" else "the classifier without the metre features"
        lines.append(f"{name} ceiling: {what} ({len(style['classes'])} styles, first {style.get('rows')} rows) is "
                     f"right on {_cell(prompts['accuracy'], 0).strip()}% of these {prompts['pieces']} prompt pieces "
                     f"and {_cell(held.get('accuracy'), 0).strip()}% of {held.get('pieces', 0)} held-out pieces "
                     f"(balanced over styles {_cell(held.get('balanced_accuracy'), 0).strip()}%)")
    return lines


def _generation_table(report: dict[str, Any]) -> list[str]:
    lines = ["", "generated pieces".ljust(30) + "notes/s".rjust(10) + "syntax err %".rjust(14)
             + "PC entropy".rjust(12) + "groove".rjust(9)]
    rows = [(m.replace("_", " "), report["generation"][m]) for m in MODES]
    rows.append(("source pieces (data)", report["data_reference"]))
    for name, r in rows:
        if r is not None:
            lines.append(name.ljust(30) + _cell(r.get("notes_per_s"), 10) + _cell(r["syntax_error_rate"]["any"], 14, 2)
                         + _cell(r["pitch_class_entropy"], 12, 3) + _cell(r["groove_consistency"], 9, 3))
    return lines


def quality_table(quality: dict[str, Any]) -> list[str]:
    """Descriptor means, overlapped areas and undefined shares against the reference pieces, the ceiling
    beside them; mean OA with its interval, degenerate pieces, the furthest piece of each mode."""
    if not quality:
        return []
    from amadeus.descriptors import DEGENERATE_FACTOR, DESCRIPTORS

    columns = [("ceiling", "real vs real")] + [(m, m.replace("_", " ")) for m in MODES if quality.get(m)]
    ref = quality.get("reference_split", "held-out")
    lines = ["", f"sample quality against {quality['real_pieces']} {ref} pieces (kernel widths theirs; settings "
                 f"chosen on {_chosen(quality.get('chosen_on'))}): descriptor mean, overlapped area (OA) of its "
                 "distribution with the reference's, share undefined (u)",
             "descriptor".ljust(20) + f"{ref[:8]:>9}{'u':>5}"
             + "".join(f"{label[:14]:>15}{'OA':>6}{'u':>5}" for _, label in columns)]
    for d in DESCRIPTORS:
        first = quality["ceiling"] or quality[columns[-1][0]]
        row = d.ljust(20) + _cell(first["real_mean"][d], 9, 3) + _cell(first["undefined"][d]["reference"], 5, 2)
        for key, _ in columns:
            q = quality[key] or {}
            row += (_cell(q["mean"][d], 15, 3) + _cell(q["oa"][d], 6, 2) + _cell(q["undefined"][d]["generated"], 5, 2)
                    if q else "".rjust(26))
        lines.append(row)
    lines.append("mean OA [95 % interval]".ljust(34) + "".join(
        f"{_cell(quality[k]['mean_oa'], 8, 3)} {_span(quality[k]['mean_oa_ci95'], 13, 3)}    " if quality[k] else " " * 29
        for k, _ in columns))
    limits = quality.get("limits") or {}
    lines.append(f"degenerate pieces (above {DEGENERATE_FACTOR:g} x the corpus' {_cell(limits.get('max_voices'), 0, 0).strip()} "
                 f"notes at once or {_cell(limits.get('max_notes_per_beat'), 0, 0).strip()} onsets per beat): "
                 + "; ".join(f"{label} {100 * quality[k]['degenerate']['rate']:.1f}% "
                             f"{quality[k]['degenerate']['pieces'][:8]}" for k, label in columns
                             if quality[k] and quality[k].get("degenerate")))
    for key, label in columns[1:]:
        far = (quality[key] or {}).get("furthest") or []
        if far:
            f = far[0]
            value = f["descriptors"].get(f["descriptor"])
            lines.append(f"furthest {label} piece: #{f['index']}, {f['distance']:.1f} reference sd on {f['descriptor']} "
                         f"({'undefined' if value is None else format(value, '.3g')}; "
                         f"{_cell(f['descriptors'].get('max_voices'), 0, 0).strip()} notes at once)")
    return lines


def _nll_table(nll: dict[str, Any]) -> list[str]:
    if not nll:
        return []
    names = [k.split("/", 1)[1] for k in nll["without_text"] if k.startswith("nll/")]
    first = nll["without_text"]
    kind = ("diffusion ELBO (the NLL averaged over random reveal orders)" if "elbo_per_note" in first
            else "exact NLL (chain rule, column order)")
    lines = ["", f"{kind} per attribute, nats per note ({first.get('windows', 0)} windows, "
                 f"{first.get('notes', 0)} notes)", "".ljust(14) + "".join(c[:8].rjust(9) for c in names)]
    for mode in ("without_text", "with_text"):
        r = nll.get(mode)
        if r:
            lines.append(mode.replace("_", " ").ljust(14) + "".join(_cell(r[f"nll/{c}"], 9, 3) for c in names))
    lines.append("likelihood, nats per note".ljust(30) + "NLL (exact)".rjust(12) + "ELBO".rjust(9))
    for mode in ("without_text", "with_text"):
        r = nll.get(mode)
        if r:
            lines.append(mode.replace("_", " ").ljust(30) + _cell(r.get("nll_per_note"), 12, 3)
                         + _cell(r.get("elbo_per_note"), 9, 3))
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The report as plain-text tables."""
    lines = _adherence_table(report) + _style_lines(report) + _generation_table(report)
    lines += quality_table(report.get("quality") or {})
    lines += _nll_table(report["nll"])
    lines.append("")
    clap = report["clap"]
    if isinstance(clap, str):
        lines.append(clap)
    else:
        lines.append("CLAP: " + ", ".join(f"{m.replace('_', ' ')} {_cell(v, 0, 4).strip()}" for m, v in clap.items()))
    return "\n".join(lines)
