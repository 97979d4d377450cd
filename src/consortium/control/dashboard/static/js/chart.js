// Line charts as inline SVG: axes with ticks, one line per series, a legend.
// No library: a chart of a few lines over tens of rounds needs none.

import { h, s } from "./dom.js";

/** Okabe–Ito colours: told apart by colour-blind readers too. */
export const COLOURS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#999999"];

const W = 560;
const H = 260;
const M = { left: 52, right: 14, top: 12, bottom: 38 };

/** About `count` round numbers spanning [lo, hi]. */
export function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((m) => m >= raw);
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
    out.push(Number(t.toFixed(12)));
  }
  return out;
}

function domain(values, pad) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (lo === hi) {
    const spread = Math.abs(lo) * 0.1 || 0.5;
    lo -= spread;
    hi += spread;
  } else if (pad) {
    const margin = (hi - lo) * 0.05;
    lo -= margin;
    hi += margin;
  }
  return [lo, hi];
}

function label(value) {
  const abs = Math.abs(value);
  if (abs >= 1000 || value === 0) return String(Math.round(value));
  if (abs >= 10) return value.toFixed(0);
  if (abs >= 1) return value.toFixed(1).replace(/\.0$/, "");
  return value.toPrecision(2).replace(/0+$/, "").replace(/\.$/, "");
}

/**
 * A line chart figure.
 *   id: a name for the figure (data-chart), title, yLabel, xLabel;
 *   series: [{name, points: [[x, y], ...]}] (null y values are skipped);
 *   format: how a point's value reads in its tooltip.
 * The svg's data-points attribute counts the points drawn.
 */
export function lineChart({ id, title, series, xLabel = "round", yLabel = "", format = String }) {
  const drawn = series.map((one, i) => ({
    ...one,
    colour: one.colour || COLOURS[i % COLOURS.length],
    points: one.points.filter(([, y]) => y !== null && y !== undefined && Number.isFinite(y)),
  }));
  const all = drawn.flatMap((one) => one.points);
  const figure = h("figure", { class: "chart", dataset: { chart: id } },
    h("figcaption", {}, title));
  const svg = s("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": title,
    preserveAspectRatio: "xMidYMid meet",
    dataset: { points: String(all.length) },
  });
  figure.append(svg);
  if (all.length === 0) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
      "no values yet"));
    return figure;
  }
  const [x0, x1] = domain([...all.map(([x]) => x), 1], false);
  const [y0, y1] = domain(all.map(([, y]) => y), true);
  const px = (x) => M.left + ((x - x0) / (x1 - x0)) * (W - M.left - M.right);
  const py = (y) => H - M.bottom - ((y - y0) / (y1 - y0)) * (H - M.top - M.bottom);

  const axes = s("g", { class: "axes" });
  for (const t of ticks(y0, y1)) {
    axes.append(
      s("line", { x1: M.left, x2: W - M.right, y1: py(t), y2: py(t), class: "grid" }),
      s("text", { x: M.left - 6, y: py(t) + 4, "text-anchor": "end" }, label(t)));
  }
  const xTicks = ticks(x0, x1, Math.min(8, Math.max(1, x1 - x0))).filter(Number.isInteger);
  for (const t of xTicks) {
    axes.append(
      s("line", { x1: px(t), x2: px(t), y1: H - M.bottom, y2: H - M.bottom + 4 }),
      s("text", { x: px(t), y: H - M.bottom + 16, "text-anchor": "middle" }, String(t)));
  }
  axes.append(
    s("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }),
    s("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom }),
    s("text", { x: (M.left + W - M.right) / 2, y: H - 4, "text-anchor": "middle", class: "axis-label" }, xLabel),
    s("text", {
      x: 12, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle", class: "axis-label",
      transform: `rotate(-90 12 ${(M.top + H - M.bottom) / 2})`,
    }, yLabel));
  svg.append(axes);

  for (const one of drawn) {
    const sorted = [...one.points].sort((a, b) => a[0] - b[0]);
    const path = sorted.map(([x, y], i) => `${i ? "L" : "M"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join("");
    const group = s("g", { class: "series", dataset: { series: one.name } },
      s("path", { d: path, fill: "none", stroke: one.colour, "stroke-width": 2 }));
    for (const [x, y] of sorted) {
      group.append(s("circle", { cx: px(x), cy: py(y), r: 3.5, fill: one.colour, class: "pt" },
        s("title", {}, `${one.name} · ${xLabel} ${x}: ${format(y)}`)));
    }
    svg.append(group);
  }
  figure.append(h("ul", { class: "legend" }, drawn.map((one) => h("li", {},
    s("svg", { width: 14, height: 14, viewBox: "0 0 14 14", "aria-hidden": "true" },
      s("rect", { width: 14, height: 14, rx: 3, fill: one.colour })),
    one.name))));
  return figure;
}
