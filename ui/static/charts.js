// mlscope charts: small SVG line and bar charts for the evaluations, compare and SQL pages.
//
// Own module rather than a vendored library: the pages need two chart kinds, and SVG built with
// createElementNS keeps every untrusted label a text node (<text>, <title>) under the strict CSP.
// Numbers are the only values set as attributes, except hrefs the caller builds from validated ids.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f"];
  const WIDTH = 720;
  const HEIGHT = 320;
  const MARGIN = { left: 64, right: 170, top: 16, bottom: 48 };
  const PLOT_W = WIDTH - MARGIN.left - MARGIN.right;
  const PLOT_H = HEIGHT - MARGIN.top - MARGIN.bottom;
  const POINT_R = 5;

  function svgEl(tag, attributes, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
    for (const child of children) node.append(typeof child === "string" ? document.createTextNode(child) : child);
    return node;
  }

  // Long labels are cut to fit; the whole text stays in the element's <title> tooltip.
  function label(attributes, text, limit) {
    const shown = text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
    return svgEl("text", attributes, shown, svgEl("title", null, text));
  }

  function color(index) {
    return PALETTE[index % PALETTE.length];
  }

  // About five round tick values covering [lo, hi].
  function niceTicks(lo, hi) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / 5;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
    return ticks;
  }

  // A linear (or log2) scale from [lo, hi] onto [0, length].
  function scale(lo, hi, length, log) {
    const f = log ? Math.log2 : (v) => v;
    const a = f(lo);
    const span = f(hi) - a || 1;
    return (v) => ((f(v) - a) / span) * length;
  }

  function frame(title) {
    const svg = svgEl("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img" });
    svg.append(svgEl("title", null, title));
    return svg;
  }

  function axisLabel(text, x, y, vertical) {
    const label = svgEl("text", { x, y, class: "axis-label", "text-anchor": "middle" }, text);
    if (vertical) label.setAttribute("transform", `rotate(-90 ${x} ${y})`);
    return label;
  }

  function yAxis(svg, ticks, y, format, label) {
    for (const tick of ticks) {
      const py = MARGIN.top + PLOT_H - y(tick);
      svg.append(svgEl("line", { x1: MARGIN.left, x2: MARGIN.left + PLOT_W, y1: py, y2: py, class: "grid-line" }),
        svgEl("text", { x: MARGIN.left - 6, y: py + 4, "text-anchor": "end", class: "tick" }, format(tick)));
    }
    svg.append(axisLabel(label, 14, MARGIN.top + PLOT_H / 2, true));
  }

  function legend(svg, names) {
    names.forEach((name, index) => {
      const y = MARGIN.top + 8 + index * 18;
      const x = WIDTH - MARGIN.right + 12;
      svg.append(svgEl("rect", { x, y: y - 8, width: 10, height: 10, fill: color(index) }),
        label({ x: x + 16, y: y + 1, class: "legend" }, name, 26));
    });
  }

  // For items that would be drawn on the same spot (same keyOf): each one's rank among them and
  // how many they are, in the order given, so they can be drawn apart and each stays reachable.
  function sharedSpots(items, keyOf) {
    const groups = new Map();
    const ranks = items.map((item) => {
      const key = keyOf(item);
      const rank = groups.get(key) || 0;
      groups.set(key, rank + 1);
      return rank;
    });
    return items.map((item, i) => ({ rank: ranks[i], of: groups.get(keyOf(item)) }));
  }

  function sharedTitle(title, of) {
    return of > 1 ? `${title}\n(one of ${of} at this point, drawn side by side)` : title;
  }

  // A mark (circle or bar) wrapped in a link when it has one; its tooltip is a <title> text node.
  function mark(shape, attributes, item, options, of) {
    const node = svgEl(shape, attributes, svgEl("title", null, sharedTitle(item.title, of || 1)));
    node.classList.add("mark");
    if (options.picked && options.picked.has(item.key)) node.classList.add("picked");
    node.dataset.key = item.key === undefined ? "" : String(item.key);
    if (!item.href) return node;
    const link = svgEl("a", { href: item.href }, node);
    if (options.onPick) {
      // Shift-click picks the point (for compare) instead of following its link.
      link.addEventListener("click", (event) => {
        if (!event.shiftKey) return;
        event.preventDefault();
        options.onPick(item.key);
      });
    }
    return link;
  }

  // series: [{name, points: [{x, y, title, href, key}]}], x and y numbers (y > 0 on a log axis).
  function lineChart(series, options) {
    const points = series.flatMap((s) => s.points);
    const svg = frame(options.title);
    if (!points.length) return svg;
    const xs = points.map((p) => p.x);
    const logX = xs.every((v) => v > 0);
    const x = scale(Math.min(...xs), Math.max(...xs), PLOT_W, logX);
    const yTicks = niceTicks(0, Math.max(...points.map((p) => p.y)));
    const y = scale(0, yTicks[yTicks.length - 1] || 1, PLOT_H, false);
    yAxis(svg, yTicks, y, options.yFormat, options.yLabel);
    for (const value of [...new Set(xs)].sort((a, b) => a - b)) {
      svg.append(svgEl("text", { x: MARGIN.left + x(value), y: MARGIN.top + PLOT_H + 16, "text-anchor": "middle", class: "tick" },
        String(value)));
    }
    svg.append(axisLabel(options.xLabel, MARGIN.left + PLOT_W / 2, HEIGHT - 8, false));
    const at = (p) => [MARGIN.left + x(p.x), MARGIN.top + PLOT_H - y(p.y)];
    const placed = series.flatMap((s, index) => [...s.points].sort((a, b) => a.x - b.x).map((p) => ({ p, index, at: at(p) })));
    series.forEach((_, index) => {
      const line = placed.filter((item) => item.index === index).map((item) => item.at.join(",")).join(" ");
      svg.append(svgEl("polyline", { points: line, fill: "none", stroke: color(index), "stroke-width": 2 }));
    });
    // Points on the same pixel are set around it on a ring wide enough that none covers another.
    const spots = sharedSpots(placed, (item) => item.at.map(Math.round).join(","));
    placed.forEach(({ p, index, at: [cx, cy] }, i) => {
      const { rank, of } = spots[i];
      const ring = of > 1 ? POINT_R / Math.sin(Math.PI / Math.max(of, 2)) + 1 : 0;
      const angle = Math.PI + (2 * Math.PI * rank) / of;
      svg.append(mark("circle", { cx: cx + ring * Math.cos(angle), cy: cy + ring * Math.sin(angle), r: POINT_R, fill: color(index) },
        p, options, of));
    });
    legend(svg, series.map((s) => s.name));
    return svg;
  }

  // groups: [{name, bars: [{series (index), value, title, href, key}]}]; a dashed line at
  // options.reference (1 for a normalised chart) when given.
  function barChart(groups, seriesNames, options) {
    const svg = frame(options.title);
    const values = groups.flatMap((g) => g.bars.map((b) => b.value));
    if (!values.length) return svg;
    const yTicks = niceTicks(0, Math.max(...values, options.reference || 0));
    const y = scale(0, yTicks[yTicks.length - 1] || 1, PLOT_H, false);
    yAxis(svg, yTicks, y, options.yFormat, options.yLabel);
    const slot = PLOT_W / groups.length;
    const width = Math.max(2, (slot * 0.8) / Math.max(1, seriesNames.length));
    groups.forEach((group, gi) => {
      const left = MARGIN.left + gi * slot + slot * 0.1;
      // Bars of one series in one group share its place: each gets a part of its width.
      const spots = sharedSpots(group.bars, (bar) => bar.series);
      group.bars.forEach((bar, i) => {
        const { rank, of } = spots[i];
        const h = y(bar.value);
        svg.append(mark("rect", { x: left + bar.series * width + (rank * width) / of, y: MARGIN.top + PLOT_H - h,
          width: Math.max(1, width / of - 1), height: h, fill: color(bar.series) }, bar, options, of));
      });
      if (groups.length <= 24) {
        svg.append(label({ x: left + slot * 0.4, y: MARGIN.top + PLOT_H + 16, "text-anchor": "middle", class: "tick" },
          group.name, 18));
      }
    });
    if (options.reference) {
      const py = MARGIN.top + PLOT_H - y(options.reference);
      svg.append(svgEl("line", { x1: MARGIN.left, x2: MARGIN.left + PLOT_W, y1: py, y2: py, class: "reference" }));
    }
    svg.append(axisLabel(options.xLabel, MARGIN.left + PLOT_W / 2, HEIGHT - 8, false));
    if (seriesNames.length > 1) legend(svg, seriesNames);
    return svg;
  }

  window.mlscopeCharts = Object.freeze({ lineChart, barChart, niceTicks });
})();
