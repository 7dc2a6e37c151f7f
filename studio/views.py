"""What the app shows, as text and tables: every number formatted once, here, and tested without Gradio."""

from __future__ import annotations

import re
import time

from . import gate


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+~-]+){2,}/?")


def redact(text: str) -> str:
    """`text` with server paths replaced by their last part (public output names no directory)."""
    return _PATH.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def model_name(source: str) -> str:
    """A model for public display: the shipped toy name, a Hub id or open_clip name, or a path's last part."""
    from rlcm.paths import toy_model_name

    return toy_model_name(source) or (source if source.count("/") <= 1 and not source.startswith(("/", ".")) else
                                      redact(source) if source.startswith("/") else source.rsplit("/", 1)[-1])


def pct(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def accuracy_text(metrics: dict) -> str:
    """Held-out accuracy with its interval and n, and what it means; e.g. "83% (95% interval 64–93%, n=20)"."""
    acc, n = metrics.get("accuracy"), metrics.get("accuracy_n", metrics.get("n_test"))  # decided pairs
    if acc is None or not n:
        return "no held-out pairs yet"
    ci = metrics.get("accuracy_ci")
    text = f"{pct(acc)} ({'95% interval ' + pct(ci[0]) + '–' + pct(ci[1]) + ', ' if ci else ''}n={n})"
    if metrics.get("better_than_chance") is False:
        text += " — **not better than chance**"
    return text


def rate_counts(mine: int, total: int, served: str, candidate: str | None) -> str:
    trial = f" · on trial: **{candidate}**" if candidate else ""
    return f"your ratings: **{mine}** · all ratings: **{total}** · serving **{served}**{trial}"


def round_progress(p: dict, now: float | None = None) -> str:
    """One line for the Train tab: state, epoch, elapsed time and ETA, the reward model's accuracy."""
    now = now or time.time()
    text = f"**{p.get('state', 'idle')}**"
    if "round" in p:
        epoch, epochs = p.get("epoch", 0), p.get("epochs")
        text += f" · round {p['round']} · epoch {epoch}/{epochs or '?'}"
        if p.get("started") and p.get("state") not in ("done", "failed", "cancelled"):
            elapsed = now - p["started"]
            text += f" · elapsed {duration(elapsed)}"
            done_since = epoch - p.get("resumed_at_epoch", 0)
            if epochs and done_since > 0 and p.get("epoch_at"):
                per = (p["epoch_at"] - p["started"]) / done_since
                text += f" · ETA {duration(max(0.0, per * (epochs - epoch) - (now - p['epoch_at'])))}"
    if p.get("reward_model"):
        text += f" · reward model held-out accuracy {accuracy_text(p['reward_model'])}"
        text += _refits([r["epoch"] for r in p.get("rows", []) if "reward_model_refit" in r])
    if p.get("verdict"):
        text += f" · result: **{p['verdict']}**" + (f" ({redact(p['verdict_reason'])})" if p.get("verdict_reason") else "")
    if p.get("error"):
        text += f"\n\nfailed: `{redact(p['error'])}`"
    return text


def trial_text(candidate: str | None, served: str, rec: gate.Record | None, decision: str, why: str) -> str:
    if candidate is None:
        return "no candidate on trial"
    return (f"**{candidate}** on trial against **{served}**: {rec.wins} wins, {rec.losses} losses, {rec.ties} ties "
            f"— {decision}: {why}")


def _confirmed(c: dict | None) -> str:
    """"-8.7 ± 1.1 pts (256 images)": the confirmation check's paired change, or "–"."""
    return f"{c['change_points']:+.1f} ± {c['se_points']:.1f} pts ({c['n']} images)" if c else "–"


def history_rows(rounds: list[dict]) -> list[dict]:
    """The rounds table, newest first, with formatted figures only."""
    out = []
    for r in sorted(rounds, key=lambda r: r["id"], reverse=True):
        m = r.get("metrics") or {}
        rm = m.get("reward_model") or {}
        fid = (f"{pct(m['fidelity_before'], 1)} → {pct(m['fidelity_after'], 1)}"
               if m.get("fidelity_before") is not None and m.get("fidelity_after") is not None else "–")
        rew = (f"{m['reward_before']:.2f} → {m['reward_after']:.2f}"
               if m.get("reward_before") is not None and m.get("reward_after") is not None else "–")
        out.append({"round": r["id"], "status": r["status"], "verdict": r.get("verdict") or "–",
                    "why": redact(r.get("verdict_reason") or r.get("error") or ""),
                    "by": (r.get("config") or {}).get("by", ""), "from": (r.get("config") or {}).get("init_version", ""),
                    "reward-model accuracy": (accuracy_text(rm) + _refits([x["epoch"] for x in
                                                                           m.get("reward_model_refits", [])])
                                              if rm else "–"),
                    "reward-model score (held-out)": rew, "prompt fidelity": fid,
                    "fidelity vs base, new prompts": _confirmed(m.get("fidelity_confirmed")),
                    "epochs": _epochs(m), "train time": duration(m.get("train_seconds")),
                    "time by stage": stage_times(m.get("stage_seconds")),
                    "finished": (r.get("finished_at") or "")[:19].replace("T", " ")})
    return out


STAGE_LABELS = {"starting": "start", "fitting reward model": "fit", "waiting for the pair queue": "pair queue",
                "training": "training", "waiting for votes": "waiting for votes", "checking": "checks",
                "checking while on trial": "checks on trial"}


def stage_times(stages: dict | None) -> str:
    """"fit 4 s · pair queue 2 s · training 1 min 06 s · checks 21 s": where a round's time went (stages of
    under half a second left out), in the order a round passes them."""
    if not stages:
        return "–"
    order = [k for k in STAGE_LABELS if k in stages] + sorted(k for k in stages if k not in STAGE_LABELS)
    parts = [f"{STAGE_LABELS.get(k, k)} {duration(stages[k])}" for k in order if stages[k] >= 0.5]
    return " · ".join(parts) or "–"


def _refits(epochs: list[int]) -> str:
    """" · refitted on new labels after epochs 3, 6": where a round went on with a newer reward model."""
    return f" · refitted on new labels after epoch{'s' if len(epochs) > 1 else ''} " + \
        ", ".join(map(str, epochs)) if epochs else ""


def _epochs(m: dict) -> str:
    """"16", or "8 of 16 (later epochs lost prompt fidelity)" when the round handed over an earlier epoch (or
    stepped back to one after the fidelity confirmation)."""
    ran, kept = m.get("epochs"), m.get("epoch_served")
    if ran is None:
        return "–"
    if m.get("stepped_back_from"):
        return f"{kept} of {ran} (epoch {m['stepped_back_from']['epoch']} lost prompt fidelity on new prompts)"
    return f"{kept} of {ran} (later epochs lost prompt fidelity)" if kept is not None and kept < ran else str(ran)


def leaderboard_rows(rows: list[dict]) -> list[dict]:
    return [{"version": r["version"], "status": r["status"], "people's votes": r["votes"],
             "win rate vs base (90% interval)": (f"{pct(r['win_vs_base'])} ({pct(r['win_low'])}–{pct(r['win_high'])})"
                                                 if r["votes"] else "no votes yet"),
             "reward-model score": "–" if r["reward"] is None else f"{r['reward']:.2f}",
             "flag": "reward up, people not convinced: possible reward hacking" if r["reward_hacking"] else ""}
            for r in rows]


def reward_model_summary(info: dict) -> str:
    """The Reward model tab's headline: version, held-out accuracy with interval and n, data sizes."""
    if not info.get("fitted"):
        return "no reward model yet: rate at least 8 pairs, then fit one (or start a round)"
    lines = [f"**{info['version']}** · held-out accuracy {accuracy_text(info)}"]
    if info.get("better_than_chance") is False:
        lines.append("This model is **no better than chance** on its held-out pairs: automatic rounds are blocked "
                     "and a manual round asks for confirmation. Rate more pairs.")
    extra = [f"{k.replace('_', ' ')}: {info[k]:.3f}" if isinstance(info[k], float) else f"{k.replace('_', ' ')}: {info[k]}"
             for k in ("log_loss", "n_pairs", "n_raters") if info.get(k) is not None]
    if extra:
        lines.append(" · ".join(extra))
    return "\n\n".join(lines)
