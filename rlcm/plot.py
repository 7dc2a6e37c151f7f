"""Reward-curve PNGs from a trainer's log rows."""

from __future__ import annotations

from pathlib import Path


def reward_figure(rows: list[dict], title: str = "RLCM", size: tuple[float, float] = (6, 3.5)):
    """Train reward per epoch, held-out reward (and toy fidelity) at evaluations, as a closed matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    tr = [r for r in rows if "reward_mean" in r]
    ev = [r for r in rows if "eval_reward_mean" in r]
    if tr:
        ax.plot([r["epoch"] for r in tr], [r["reward_mean"] for r in tr], label="train reward", alpha=0.6)
    if ev:
        ax.plot([r["epoch"] for r in ev], [r["eval_reward_mean"] for r in ev], "o-", label="held-out reward")
    for i, r in enumerate(r for r in rows if "reward_model_refit" in r):  # a studio round changed reward models
        ax.axvline(r["epoch"], color="grey", ls=":", lw=1, label="reward model refitted" if i == 0 else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("reward")
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    fid = [r for r in ev if "eval_fidelity" in r]
    if fid:  # toy world: prompt fidelity on its own axis, to see what the reward costs
        ax2 = ax.twinx()
        (line,) = ax2.plot([r["epoch"] for r in fid], [100 * r["eval_fidelity"] for r in fid], "s--", color="tab:green")
        ax2.set_ylabel("held-out fidelity (%)")
        handles, labels = handles + [line], labels + ["held-out fidelity"]
    if handles:
        ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def reward_curve(rows: list[dict], path: str | Path, title: str = "RLCM") -> Path:
    reward_figure(rows, title).savefig(path, dpi=100)
    return Path(path)
