"""The browser studio: a Gradio page over `Amadeus.generate` / `.regenerate` / `.infill` / `.accompany`.

`build_app(model_or_path)` returns a `gr.Blocks`: a caption (when the model reads text) with
guidance, controls (instruments, tempo, time signature, key, pitch and velocity ranges, length),
denoising steps S with the measured speed beside it, temperature / top-p / seed, an optional MIDI
upload to continue or to re-sample chosen attributes, and the results (piano roll, WAV, MIDI file,
figures). `studio_generate` is the plain typed function behind the button; it raises `StudioError`
with one clear message, which the page shows while the server keeps serving. The same function is
Gradio's API endpoint "/generate": `gradio_client.Client(url).predict("a caption", api_name="/generate")`.

Gradio is imported only inside `build_app` (the optional extra `amadeus[studio]`), so `import amadeus`
works without it. Analytics are switched off; the page never makes a public share link.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from amadeus.sampling.options import TEXT_GUIDANCE, SamplingOptions, setting_text
from amadeus.theory import GM_PROGRAM_NAMES, MAJOR_TONICS, MINOR_TONICS

DEFAULTS = SamplingOptions()  # the sampler's defaults are the page's

DRUMS = "Drums"
INSTRUMENT_CHOICES = (*GM_PROGRAM_NAMES, DRUMS)
KEY_CHOICES = ("any", *(f"{p} major" for p in MAJOR_TONICS), *(f"{p} minor" for p in MINOR_TONICS))
ANY = "any"
LENGTH_UNITS = ("bars", "notes")
UPLOAD_MODES = ("continue", "regenerate", "infill", "accompany")
MAX_LENGTH = {"bars": 64, "notes": 2048}
NOTE_CAP = 1024  # generated rows when the length is given in bars
BENCHMARK = Path("benchmarks") / "results" / "generate.json"
WIDGETS = {"steps": "denoising steps S", "temperature": "temperature", "top_p": "top-p", "guidance": "guidance"}


class StudioError(ValueError):
    """Input the studio cannot use; the message is shown on the page as it is."""


@dataclass
class Generation:
    """What one press of Generate produced: files and the figures shown beside them."""

    midi: Path
    piano_roll: Path
    wav: Path | None
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # e.g. why there is no audio


def _gm_program(name: str) -> str:
    """Control value of an instrument choice: its GM program number, or "drums"."""
    if name == DRUMS:
        return "drums"
    try:
        return str(GM_PROGRAM_NAMES.index(name))
    except ValueError:
        raise StudioError(f"unknown instrument {name!r}: choose a General MIDI name from the list") from None


def control_specs(instruments: Sequence[str] = (), tempo: float = 0, time_signature: str = ANY,
                  key: str = ANY, pitch_low: int = 0, pitch_high: int = 127, velocity_low: int = 1,
                  velocity_high: int = 127) -> list[str]:
    """The page's control widgets as `amadeus.controls` strings (unset widgets add nothing)."""
    specs = []
    if instruments:
        specs.append("instrument=" + ",".join(_gm_program(n) for n in instruments))
    if tempo:
        specs.append(f"tempo={float(tempo):g}")
    if time_signature and time_signature != ANY:
        specs.append(f"time_signature={time_signature}")
    if key and key != ANY:
        specs.append(f"key={key}")
    if (int(pitch_low), int(pitch_high)) != (0, 127):
        specs.append(f"pitch={int(pitch_low)}-{int(pitch_high)}")
    if (int(velocity_low), int(velocity_high)) != (1, 127):
        specs.append(f"velocity={int(velocity_low)}-{int(velocity_high)}")
    return specs


def _read_upload(path: str | Path) -> Any:
    """The uploaded file as a symusic Score; StudioError when it is not a readable MIDI file."""
    from symusic import Score

    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(4)
        if head != b"MThd":
            raise ValueError("it does not start with the MIDI header MThd")
        score = Score(str(p))
    except (OSError, ValueError, RuntimeError) as e:
        raise StudioError(f"{p.name}: not a MIDI file ({e})") from None
    if score.note_num() == 0:
        raise StudioError(f"{p.name}: the MIDI file has no notes to continue or re-sample")
    return score


def _others(setting: float | Mapping[str, float]) -> float:
    """The value a sampler setting gives the attributes it does not name ("*"): a slider's default."""
    return float(setting.get("*", 1.0)) if isinstance(setting, Mapping) else float(setting)


def _options(length_unit: str, length: int, steps: int | None, temperature: float, top_p: float,
             guidance: float | None) -> SamplingOptions:
    """The page's sampler settings as SamplingOptions (which validates them): the temperature and top-p
    sliders set "*", every attribute without a value of its own (amadeus.sampling.options)."""
    if length_unit not in LENGTH_UNITS:
        raise StudioError(f"length unit {length_unit!r}: choose bars or notes")
    if not 1 <= int(length) <= MAX_LENGTH[length_unit]:
        raise StudioError(f"length {length} {length_unit}: choose 1 to {MAX_LENGTH[length_unit]}")
    try:
        return SamplingOptions(steps=None if steps is None else int(steps), temperature={"*": float(temperature)},
                               top_p={"*": float(top_p)}, guidance=guidance, **_length(length_unit, int(length)))
    except ValueError as e:  # SamplingOptions names the setting first: say which widget it is
        name = str(e).split(" ", 1)[0]
        raise StudioError(f"{WIDGETS[name]}: {e}" if name in WIDGETS else str(e)) from None


def studio_generate(model: Any, caption: str = "", guidance: float | None = None, instruments: Sequence[str] = (),
                    tempo: float = 0, time_signature: str = ANY, key: str = ANY, pitch_low: int = 0,
                    pitch_high: int = 127, velocity_low: int = 1, velocity_high: int = 127,
                    length_unit: str = "bars", length: int = 8, steps: int | None = None,
                    temperature: float = _others(DEFAULTS.temperature),
                    top_p: float = _others(DEFAULTS.top_p), seed: int = 0, upload: str | Path | None = None,
                    upload_mode: str = "continue", prompt_bars: int = 2,
                    regenerate: Sequence[str] = ("velocity",), infill_bars: str = "5-8", keep_tracks: str = "1",
                    out_dir: str | Path | None = None) -> Generation:
    """One generation with the page's settings (a loaded `Amadeus` model); files go to `out_dir`
    (default: a fresh folder under the temp dir). `temperature` and `top_p` set every attribute that the
    sampler's defaults do not set apart (pitch and chord keep theirs); `guidance` None is the sampler's
    default, and without a caption guidance has nothing to do and is not used.
    StudioError on input the model cannot honour."""
    from amadeus.controls import ControlError, parse_controls

    caption = (caption or "").strip()
    reads_text = getattr(model.module, "text_encoder", None) is not None
    if caption and not reads_text:
        raise StudioError("this model was trained without text, so it cannot read a caption: clear the caption "
                          "box, or start the studio with a text model (e.g. outputs/demo/model-text.ckpt)")
    options = _options(length_unit, length, steps, temperature, top_p, guidance if caption else None)
    specs = control_specs(instruments, tempo, time_signature, key, pitch_low, pitch_high, velocity_low, velocity_high)
    try:
        parse_controls(specs, model.tokenizer)
    except ControlError as e:
        raise StudioError(f"impossible control: {e}") from None
    common = dict(options=options, seed=int(seed), controls=specs, text=caption or None)
    whole = replace(options, max_bars=None, min_notes=0)  # the upload's own length (regenerate, infill, accompany)
    try:
        if upload is None:
            score = model.generate(1, **common)[0]
        elif upload_mode == "continue":
            piece = _read_upload(upload)
            if int(prompt_bars) < 1:
                raise StudioError(f"continue from the first {prompt_bars} bars: choose at least 1 bar")
            score = model.generate(1, prompt=piece, prompt_bars=int(prompt_bars), **common)[0]
        elif upload_mode == "regenerate":
            piece = _read_upload(upload)
            if not regenerate:
                raise StudioError("regenerate: tick the attributes to re-sample (e.g. instrument to re-orchestrate, "
                                  "velocity to re-voice the dynamics)")
            score = model.regenerate(piece, list(regenerate), **{**common, "options": whole})[0]
        elif upload_mode == "infill":
            score = model.infill(_read_upload(upload), _span(infill_bars), **{**common, "options": whole})[0]
        elif upload_mode == "accompany":
            keep = [t.strip() for t in str(keep_tracks).split(",") if t.strip()]
            score = model.accompany(_read_upload(upload), keep, **{**common, "options": whole})[0]
        else:
            raise StudioError(f"upload mode {upload_mode!r}: choose one of {', '.join(UPLOAD_MODES)}")
    except StudioError:
        raise
    except ValueError as e:  # ControlError, TokenizerError and the sampler's checks are ValueErrors
        raise StudioError(str(e)) from None
    return _write_outputs(model, score, out_dir, caption)


def _span(text: str) -> tuple[int, int]:
    """The page's "5-8" (or "5") as bars (5, 8)."""
    first, _, last = str(text).strip().partition("-")
    try:
        return int(first), int(last or first)
    except ValueError:
        raise StudioError(f"bars to rewrite {text!r}: write them as A-B, e.g. 5-8") from None


def _length(unit: str, length: int) -> dict[str, int]:
    """Sampler limits for a length: `length` bars (at least one row per bar before EOS), or exactly
    `length` rows."""
    if unit == "bars":
        return {"max_bars": length, "max_notes": NOTE_CAP, "min_notes": length}
    return {"max_notes": length, "min_notes": length}


def _write_outputs(model: Any, score: Any, out_dir: str | Path | None, caption: str) -> Generation:
    """MIDI, piano roll and (with a soundfont) WAV of `score`, plus the last sample's figures."""
    from amadeus.render import NO_SOUNDFONT, find_soundfont, piano_roll_png, render_wav

    out = Path(out_dir) if out_dir else _fresh_dir(Path(tempfile.gettempdir()) / "amadeus-studio")
    out.mkdir(parents=True, exist_ok=True)
    midi = out / "amadeus.mid"
    score.dump_midi(str(midi))
    title = caption if len(caption) <= 90 else caption[:87] + "..."
    roll = piano_roll_png(score, out / "piano_roll.png", title=title or None)
    wav, note = None, ""
    if find_soundfont() is None:
        note = NO_SOUNDFONT
    else:
        wav = render_wav(score, out / "amadeus.wav")
    r = model.last_result
    figures = {"notes": int(score.note_num()), "generated notes": int(r.notes),
               "notes/s": round(r.notes_per_s, 1), "seconds": round(r.seconds, 2),
               "guard interventions": int(r.guard_interventions),
               "control interventions": int(r.control_interventions)}
    return Generation(midi, roll, wav, figures, note)


def _fresh_dir(root: Path, keep_s: float = 3600.0) -> Path:
    """A new folder under `root`, after removing those older than `keep_s` (Gradio serves its own copies)."""
    import shutil
    import time

    if root.is_dir():
        for old in root.iterdir():
            if old.is_dir() and time.time() - old.stat().st_mtime > keep_s:
                shutil.rmtree(old, ignore_errors=True)
    return root / uuid.uuid4().hex[:12]


def steps_tradeoff(path: str | Path | None = None) -> str:
    """The measured speed of each S (benchmarks/results/generate.json), or "not measured"."""
    candidates = [Path(path)] if path else [Path.cwd() / BENCHMARK, Path(__file__).resolve().parents[2] / BENCHMARK]
    for p in candidates:
        if p.is_file():
            try:
                rows = json.loads(p.read_text())["rows"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            picked = [r for r in rows if r.get("method") == "amadeus" and r.get("batch") == 1
                      and r.get("size") == "tiny" and r.get("steps")]
            if picked:
                speeds = ", ".join(f"S={r['steps']}: {r['notes_per_s']:.0f}" for r in sorted(picked, key=lambda r: r["steps"]))
                return (f"Measured speed (notes/s, tiny model, {picked[0].get('device', 'cpu')}, one piece): {speeds}. "
                        "Fewer steps are faster; more steps let each attribute see the others before it is "
                        "chosen (quality per S: docs/results.md#step-count-and-reveal-order).")
    return "Speed per S: not measured (run benchmarks/generate.py)."


def caption_examples(path: str | Path | None = None, limit: int = 6) -> list[str]:
    """Up to `limit` captions of a corpus captions file (default: the embedded Bach corpus, if built)."""
    from amadeus.captions import load_captions
    from amadeus.corpus import CAPTIONS, default_bach_dir

    p = Path(path) if path else default_bach_dir() / "midi" / CAPTIONS
    if not p.is_file():
        return []
    try:
        captions = list(dict.fromkeys(load_captions(p).values()))
    except (OSError, ValueError):
        return []
    step = max(1, len(captions) // limit)
    return captions[::step][:limit]


def load_model(model_or_path: Any) -> Any:
    """An `Amadeus` from a loaded one or a .ckpt / exported-folder path."""
    from amadeus import Amadeus

    return model_or_path if isinstance(model_or_path, Amadeus) else Amadeus.load(model_or_path)


# ----------------------------------------------------------------------------------------------
# the page


def _time_signature_choices(tokenizer: Any) -> list[str]:
    common = ["4/4", "3/4", "2/4", "6/8", "2/2", "12/8"]
    known = [f"{n}/{d}" for n, d in tokenizer.config.time_signatures]
    return [ANY] + [ts for ts in common if ts in known] + [ts for ts in known if ts not in common]


def _inputs(gr: Any, model: Any, examples: list[str]) -> list[Any]:
    """The page's input widgets, in the order of `studio_generate`'s parameters after `model`."""
    tok = model.tokenizer
    reads_text = getattr(model.module, "text_encoder", None) is not None
    with gr.Column(scale=3):
        caption = gr.Textbox(label="Caption", lines=2, elem_id="caption",
                             placeholder="e.g. A calm chorale in D minor, 3/4, at 96 bpm, for four voices"
                             if reads_text else "this model reads no text: leave empty")
        if examples and reads_text:
            gr.Examples(examples=[[c] for c in examples], inputs=[caption], label="Captions from the corpus")
        guidance = gr.Slider(1.0, 6.0, value=TEXT_GUIDANCE, step=0.5,
                             label=f"Guidance with a caption (default {TEXT_GUIDANCE:g}; 1 = the conditional model alone, "
                                   "higher = follow it more)")
        instruments = gr.Dropdown(list(INSTRUMENT_CHOICES), value=[], multiselect=True, filterable=True,
                                  label="Instruments (type to search the General MIDI names; empty = free)")
        with gr.Row():
            tempo = gr.Number(value=0, label="Tempo (bpm, 0 = free)", minimum=0, maximum=400)
            ts = gr.Dropdown(_time_signature_choices(tok), value=ANY, label="Time signature", filterable=True)
            key = gr.Dropdown(list(KEY_CHOICES), value=ANY, label="Key", filterable=True)
        with gr.Row():
            p_lo = gr.Slider(0, 127, value=0, step=1, label="Lowest pitch (MIDI)")
            p_hi = gr.Slider(0, 127, value=127, step=1, label="Highest pitch (MIDI)")
        with gr.Row():
            v_lo = gr.Slider(1, 127, value=1, step=1, label="Softest velocity")
            v_hi = gr.Slider(1, 127, value=127, step=1, label="Loudest velocity")
    with gr.Column(scale=2):
        with gr.Row():
            unit = gr.Radio(list(LENGTH_UNITS), value="bars", label="Length in")
            length = gr.Number(value=8, precision=0, label="Length", minimum=1)
        steps = gr.Slider(1, tok.K, value=DEFAULTS.steps_for(tok.K), step=1, label="Denoising steps S (speed / quality)")
        gr.Markdown(steps_tradeoff(), elem_id="steps-tradeoff")
        with gr.Row():
            temperature = gr.Slider(0.0, 2.0, value=_others(DEFAULTS.temperature), step=0.05,
                                    label=f"Temperature (default {setting_text(DEFAULTS.temperature)}; sets *)")
            top_p = gr.Slider(0.05, 1.0, value=_others(DEFAULTS.top_p), step=0.05,
                              label=f"Top-p (default {setting_text(DEFAULTS.top_p)}; sets *)")
            seed = gr.Number(value=0, precision=0, label="Seed")
        upload = gr.File(label="Your MIDI (optional)", file_types=[".mid", ".midi"], type="filepath")
        with gr.Row():
            mode = gr.Radio(list(UPLOAD_MODES), value="continue", label="With the upload")
            bars = gr.Number(value=2, precision=0, minimum=1, label="Continue from its first N bars")
        regen = gr.CheckboxGroup(["instrument", "velocity", "pitch", "duration", "tempo", "chord"],
                                 value=["velocity"], label="Regenerate (instrument = re-orchestrate, "
                                                           "velocity = re-voice the dynamics)")
        with gr.Row():
            infill_bars = gr.Textbox(value="5-8", label="Infill: the bars to rewrite (A-B, bar 1 at time 0)")
            keep_tracks = gr.Textbox(value="1", label="Accompany: tracks to keep (numbers or names, e.g. 1 or Flute)")
    return [caption, guidance, instruments, tempo, ts, key, p_lo, p_hi, v_lo, v_hi, unit, length, steps,
            temperature, top_p, seed, upload, mode, bars, regen, infill_bars, keep_tracks]


def _figures_markdown(gen: Generation) -> str:
    rows = " | ".join(f"**{k}**: {v}" for k, v in gen.figures.items())
    return rows + (f"\n\n*Audio: {gen.note}*" if gen.note else "")


def build_app(model_or_path: Any, captions: str | Path | None = None) -> Any:
    """The studio page (a `gr.Blocks`) for a loaded `Amadeus` or a checkpoint path; launch it with
    `.launch(server_name="127.0.0.1")`. captions: a captions.jsonl for the caption examples."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    model = load_model(model_or_path)
    reads_text = getattr(model.module, "text_encoder", None) is not None

    def generate(caption: str = "", guidance: float = TEXT_GUIDANCE, instruments: list[str] | None = None, tempo: float = 0,
                 time_signature: str = ANY, key: str = ANY, pitch_low: int = 0, pitch_high: int = 127,
                 velocity_low: int = 1, velocity_high: int = 127, length_unit: str = "bars", length: int = 8,
                 steps: int = DEFAULTS.steps_for(model.tokenizer.K),
                 temperature: float = _others(DEFAULTS.temperature), top_p: float = _others(DEFAULTS.top_p),
                 seed: int = 0, upload: str | None = None, upload_mode: str = "continue", prompt_bars: int = 2,
                 regenerate: list[str] | None = None, infill_bars: str = "5-8", keep_tracks: str = "1",
                 progress: Any = gr.Progress()) -> tuple:
        """Generate one piece; returns (MIDI file, piano roll PNG, WAV or None, figures)."""
        progress(0.05, desc="generating")
        try:
            gen = studio_generate(model, caption, guidance, instruments or (), tempo, time_signature, key, pitch_low,
                                  pitch_high, velocity_low, velocity_high, length_unit, length, steps, temperature,
                                  top_p, seed, upload, upload_mode, prompt_bars,
                                  ["velocity"] if regenerate is None else regenerate, infill_bars, keep_tracks)
        except StudioError as e:
            raise gr.Error(str(e)) from None
        progress(1.0, desc="done")
        return str(gen.midi), str(gen.piano_roll), None if gen.wav is None else str(gen.wav), _figures_markdown(gen)

    with gr.Blocks(title="Amadeus studio", analytics_enabled=False, delete_cache=(3600, 7200)) as app:
        gr.Markdown("## Amadeus studio\n" + ("Type a caption, set controls, press **Generate**." if reads_text else
                    "This model reads no text: set controls and press **Generate**.")
                    + " Upload a MIDI file to continue it or to re-sample chosen attributes.")
        with gr.Row():
            inputs = _inputs(gr, model, caption_examples(captions))
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Row():
            midi = gr.File(label="MIDI", elem_id="midi-out")
            audio = gr.Audio(label="Audio (local soundfont)", type="filepath", elem_id="audio-out")
        roll = gr.Image(label="Piano roll", type="filepath", elem_id="piano-roll")
        figures = gr.Markdown(elem_id="figures")
        button.click(generate, inputs=inputs, outputs=[midi, roll, audio, figures], api_name="generate",
                     concurrency_limit=1)
    return app
