"""The results as a PNG bar chart, drawn with Pillow (no plotting dependency).

Top: orchestration overhead per image (ms), baseline beside flow, per (N, T).
Bottom: GPU duty cycle (%), with the issue's bars (97 % at T = 2 s, 99 % at T = 10 s).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

WIDTH, PANEL_H, MARGIN = 1200, 330, 70
COLOURS = {
    "baseline": (120, 144, 156),
    "flow": (33, 150, 243),
    "flow-batch-slot": (76, 175, 80),
}


def _panel(
    draw: ImageDraw.ImageDraw,
    top: int,
    title: str,
    groups: list[tuple[str, dict[str, float | None]]],
    *,
    lo: float,
    hi: float,
    lines: tuple[float, ...] = (),
    unit: str = "",
) -> None:
    left, right, bottom = MARGIN, WIDTH - 20, top + PANEL_H - 40
    draw.text((left, top + 5), title, fill="black")
    plot_top = top + 25
    draw.line([(left, plot_top), (left, bottom), (right, bottom)], fill="black")

    def y(value: float) -> float:
        span = hi - lo or 1.0
        return bottom - (min(max(value, lo), hi) - lo) / span * (bottom - plot_top)

    for tick in range(5):
        value = lo + (hi - lo) * tick / 4
        draw.line([(left - 4, y(value)), (left, y(value))], fill="black")
        draw.text((5, y(value) - 6), f"{value:.4g}{unit}", fill="black")
    for value in lines:
        draw.line([(left, y(value)), (right, y(value))], fill=(229, 57, 53))
        draw.text((right - 60, y(value) - 12), f"{value:g}{unit}", fill=(229, 57, 53))
    if not groups:
        return
    modes = [m for m in COLOURS if any(values.get(m) is not None for _, values in groups)]
    slot = (right - left) / len(groups)
    bar = min(40.0, slot / (len(modes) + 1))
    for i, (label, values) in enumerate(groups):
        x0 = left + i * slot + slot / 2 - bar * len(modes) / 2
        for j, mode in enumerate(modes):
            value = values.get(mode)
            if value is None:
                continue
            x = x0 + j * bar
            draw.rectangle([x, y(value), x + bar - 2, bottom], fill=COLOURS[mode])
            draw.text((x, y(value) - 12), f"{value:.3g}", fill="black")
        draw.text((left + i * slot + 4, bottom + 6), label, fill="black")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    configs: dict[tuple[int, float], dict[str, dict[str, Any]]] = {}
    for row in rows:
        configs.setdefault((row["n"], row["t"]), {})[row["mode"]] = row
    keys = sorted(configs, key=lambda k: (k[1], k[0]))
    labels = [f"N={n} T={t:g}s" for n, t in keys]
    overhead = [
        (lab, {m: r["overhead_ms"] for m, r in configs[k].items()})
        for lab, k in zip(labels, keys, strict=True)
    ]
    duty = [
        (
            lab,
            {
                m: None if r["duty_cycle"] is None else 100 * r["duty_cycle"]
                for m, r in configs[k].items()
            },
        )
        for lab, k in zip(labels, keys, strict=True)
        if k[1] > 0
    ]
    image = Image.new("RGB", (WIDTH, 2 * PANEL_H + 40), "white")
    draw = ImageDraw.Draw(image)
    top_value = max(
        (v for _, vals in overhead for v in vals.values() if v is not None), default=1.0
    )
    _panel(draw, 0, "Orchestration overhead per image, ms ((wall - N*T)/N)", overhead,
           lo=0.0, hi=top_value * 1.15, unit="")  # fmt: skip
    low = min((v for _, vals in duty for v in vals.values() if v is not None), default=90.0)
    _panel(draw, PANEL_H, "GPU duty cycle, % (busy / first render start..last image stored)",
           duty, lo=min(90.0, low - 1), hi=100.0, lines=(97.0, 99.0), unit="%")  # fmt: skip
    for i, (mode, colour) in enumerate(COLOURS.items()):
        draw.rectangle(
            [WIDTH - 420 + i * 130, 2 * PANEL_H + 15, WIDTH - 405 + i * 130, 2 * PANEL_H + 30],
            fill=colour,
        )
        draw.text((WIDTH - 400 + i * 130, 2 * PANEL_H + 16), mode, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
