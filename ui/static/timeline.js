// mlscope viewer: the trace page's flame-chart timeline, drawn on one canvas.
//
// No DOM node per span: a trace of 100k spans must pan at 60 fps, so spans live in typed arrays
// grouped into tracks (one per service/process, a sub-track per thread) and rows (depth inside
// the track), and each frame draws only the bars inside the visible window. Bars narrower than a
// pixel are merged into one grey sliver per row. Names reach the canvas only through fillText.
// Above the ruler an overview strip shows the whole trace with the window outlined (a press or a
// drag there moves the window); under the spans, counter tracks draw sampled hardware metrics.
// A trace too big to send whole is read a window at a time (options.fetchWindow, the query
// service's level-of-detail form): refetched at the canvas's resolution when the view settles,
// spans narrower than a pixel arriving as aggregates, drawn as grey slivers.
//
// Input follows Perfetto: W/S zoom, A/D pan (held keys animate), the wheel zooms around the
// cursor (shift+wheel scrolls tracks), drag pans, shift+drag or a drag on the ruler zooms to the
// dragged range, a click selects a span, a click on a track's header collapses it.
"use strict";

(() => {
  const RULER_H = 24;
  const HEADER_H = 18;
  const ROW_H = 18;
  const MINIMAP_H = 32; // the overview strip above the ruler: the whole trace, the window outlined
  const MINIMAP_ROWS = 4; // depths the overview shows
  const COUNTER_H = 40; // one hardware counter track, pinned under the span tracks
  const COUNTER_FILL = "rgba(217, 119, 6, 0.25)";
  const COUNTER_LINE = "#d97706";
  const FONT = "11px system-ui, sans-serif";
  const SLIVER = "#9ca3af";
  const OUTLINE = "#dc2626"; // the critical path's outline: red reads as "this holds the trace open"
  const MIN_WINDOW_NS = 20;
  const KEY_ZOOM_PER_MS = 0.0025; // held W/S: about 12x a second
  const KEY_PAN_PER_MS = 0.0008; // held A/D: 0.8 window widths a second
  const KEY_TAP_MS = 80; // a key press moves at least this long's worth, so a tap is seen
  const CLICK_SLOP_PX = 4;
  const URL_DEBOUNCE_MS = 200;
  const WINDOW_DEBOUNCE_MS = 150; // a windowed read waits for the view to settle this long
  const WINDOW_MARGIN = 1; // window widths read either side of the view, so a short pan needs no read
  // Attributes buildModel reads (tracks by process and thread, layer labels).
  const MODEL_ATTRIBUTES = ["process_pid", "thread_id", "thread_name", "layer_path", "layer_type"];
  // Of those, what a windowed read's spans are labelled with. Its tracks stay one per service: an
  // aggregate has no process or thread, so splitting tracks by them would part it from its spans.
  const WINDOW_LABEL_ATTRIBUTES = ["layer_path", "layer_type"];
  // The attribute names it reads, from GET /api/conventions (mlscope.conventions): app.js fetches
  // them before any page renders, after this file has loaded.
  const attributeName = (key) => window.mlscopeViewer.attributes[key];

  // --- pure model (no DOM) --------------------------------------------------------------------

  // A layer span reads as its module path and class ("features.3 (Conv2d)"), not its bare name.
  function layerLabel(name, path, type) {
    if (path === null && type === null) return name;
    const base = path && path !== "?" ? path : name;
    return type && base !== type ? `${base} (${type})` : base;
  }

  function spanLabel(span) {
    const value = (key) => {
      const found = (span.attributes || {})[attributeName(key)];
      return found === undefined || found === null ? null : String(found);
    };
    return layerLabel(span.name, value("layer_path"), value("layer_type"));
  }

  function lowerBound(sorted, value) {
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (sorted[mid] < value) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  // Which track each span sits on: its service and process (process.pid, inherited from the
  // nearest ancestor that has one), and its thread (thread.id, likewise) as a sub-track.
  function assignTracks(columns, parent) {
    const { strings, depth } = columns;
    const own = (key) => columns.attributes[attributeName(key)];
    const ownPid = own("process_pid");
    const ownThread = own("thread_id");
    const threadName = own("thread_name");
    const n = parent.length;
    const trackOf = new Int32Array(n);
    // String indexes, -1 for none; -1 too where a parent comes after its child (a windowed
    // read's entries are by track, not pre-order), so nothing is inherited from an unread row.
    const pid = new Int32Array(n).fill(-1);
    const thread = new Int32Array(n).fill(-1);
    const keys = new Map();
    const tracks = [];
    // Neighbours in pre-order mostly share a track: the last one's is tried before a key is made.
    let [lastService, lastPid, lastThread, lastTrack] = [-1, -2, -2, -1];
    for (let i = 0; i < n; i += 1) {
      const up = parent[i];
      pid[i] = ownPid[i] >= 0 ? ownPid[i] : (up >= 0 ? pid[up] : -1);
      thread[i] = ownThread[i] >= 0 ? ownThread[i] : (up >= 0 ? thread[up] : -1);
      const t = columns.service[i] === lastService && pid[i] === lastPid && thread[i] === lastThread
        ? lastTrack : trackKeyed(i);
      trackOf[i] = t;
      tracks[t].baseDepth = Math.min(tracks[t].baseDepth, depth[i]);
      tracks[t].maxDepth = Math.max(tracks[t].maxDepth, depth[i]);
      [lastService, lastPid, lastThread, lastTrack] = [columns.service[i], pid[i], thread[i], t];
    }
    return { trackOf, tracks };

    // Span i's track, found by its key or made.
    function trackKeyed(i) {
      const service = strings[columns.service[i]];
      const processKey = `${service}\u0000${pid[i]}`;
      const key = `${processKey}\u0000${thread[i]}`;
      let t = keys.get(key);
      if (t === undefined) {
        t = tracks.length;
        keys.set(key, t);
        const process = tracks.find((track) => track.processKey === processKey);
        tracks.push({
          processKey, processOrder: process ? process.processOrder : t, order: t,
          title: thread[i] < 0
            ? `${service}${pid[i] < 0 ? "" : ` · pid ${strings[pid[i]]}`}`
            : `thread ${strings[threadName[i] >= 0 ? threadName[i] : thread[i]]}`,
          isThread: thread[i] >= 0, baseDepth: Infinity, maxDepth: 0, collapsed: false,
        });
      }
      return t;
    }
  }

  // Each track's rows: span indices sorted by start, and the running maximum of their ends (so a
  // binary search finds the first bar that reaches into the window even if bars overlap).
  function buildRows(tracks, trackOf, depth, starts, ends) {
    const lists = tracks.map((track) => Array.from({ length: track.maxDepth - track.baseDepth + 1 }, () => []));
    for (let i = 0; i < trackOf.length; i += 1) lists[trackOf[i]][depth[i] - tracks[trackOf[i]].baseDepth].push(i);
    tracks.forEach((track, t) => {
      track.rows = lists[t].map((list) => {
        list.sort((a, b) => starts[a] - starts[b] || a - b);
        const index = Int32Array.from(list);
        const maxEnd = new Float64Array(index.length);
        let running = -Infinity;
        index.forEach((k, j) => { running = Math.max(running, ends[k]); maxEnd[j] = running; });
        return { index, maxEnd };
      });
    });
  }

  // Labels: a span's name, or for a layer its module path and class.
  function spanLabels(columns) {
    const { strings, name, attributes } = columns;
    const path = attributes[attributeName("layer_path")];
    const type = attributes[attributeName("layer_type")];
    const text = (index) => (index >= 0 ? strings[index] : null);
    return Array.from(name, (nameIndex, i) => (path[i] < 0 && type[i] < 0
      ? strings[nameIndex] : layerLabel(strings[nameIndex], text(path[i]), text(type[i]))));
  }

  // The first-child / next-sibling lists of a tree given by parent index in pre-order (so a
  // parent comes before its children and siblings come in order).
  function childLists(parent) {
    const n = parent.length;
    const firstChild = new Int32Array(n).fill(-1);
    const nextSibling = new Int32Array(n).fill(-1);
    const lastChild = new Int32Array(n).fill(-1);
    for (let i = 0; i < n; i += 1) {
      const up = parent[i];
      if (up < 0) continue;
      if (lastChild[up] < 0) firstChild[up] = i;
      else nextSibling[lastChild[up]] = i;
      lastChild[up] = i;
    }
    return { firstChild, nextSibling };
  }

  // The compact trace (GET /api/traces/{id}?format=compact: parallel arrays in pre-order, times
  // as nanosecond offsets from origin_ns) -> the typed arrays the timeline draws from. Offsets
  // are exact as doubles for traces under 104 days, so no per-span object or BigInt is made.
  function buildModel(columns, levels, defaultLevel) {
    const n = columns.span_id.length;
    const starts = Float64Array.from(columns.start_ns);
    const ends = new Float64Array(n);
    let totalNs = 0;
    for (let i = 0; i < n; i += 1) {
      ends[i] = starts[i] + columns.duration_ns[i];
      if (ends[i] > totalNs) totalNs = ends[i];
    }
    const fallback = Math.max(0, levels.indexOf(defaultLevel));
    const levelOfString = columns.strings.map((text) => (levels.includes(text) ? levels.indexOf(text) : fallback));
    const level = Uint8Array.from(columns.level, (index) => levelOfString[index]);
    const parent = Int32Array.from(columns.parent);
    const depth = Int32Array.from(columns.depth);
    const byId = new Map();
    columns.span_id.forEach((id, i) => byId.set(id, i));
    const { trackOf, tracks } = assignTracks(columns, parent);
    buildRows(tracks, trackOf, depth, starts, ends);
    // A process's thread sub-tracks sit under its main track.
    const order = tracks.map((_, t) => t).sort((a, b) =>
      tracks[a].processOrder - tracks[b].processOrder || tracks[a].order - tracks[b].order);
    const position = new Int32Array(order.length);
    order.forEach((t, p) => { position[t] = p; });
    for (let i = 0; i < n; i += 1) trackOf[i] = position[trackOf[i]];
    return {
      count: n, origin: BigInt(columns.origin_ns), totalNs, starts, ends, depth, level, parent,
      ...childLists(parent), labels: spanLabels(columns), strings: columns.strings, nameOf: columns.name,
      levelOf: columns.level, serviceOf: columns.service, selfNs: columns.self_ns, spanIds: columns.span_id, byId, trackOf,
      tracks: order.map((t) => tracks[t]),
      aggregateCount: columns.count ? Int32Array.from(columns.count) : null, // windowed reads: 0 for a span
      parentIds: columns.parent_id || null, // windowed reads: each span's parent id, "" for none
    };
  }

  // Span i's children in the model, by start (a windowed read's entries come by track, not in
  // pre-order).
  function childrenOf(model, i) {
    const children = [];
    for (let c = model.firstChild[i]; c >= 0; c = model.nextSibling[c]) children.push(c);
    return children.sort((a, b) => model.starts[a] - model.starts[b] || a - b);
  }

  // Ruler ticks: a 1-2-5 step giving about one label per 100 px, labelled in the unit that
  // suits the step with as many decimals as the step needs (so labels change as you zoom).
  function niceTicks(t0, t1, widthPx) {
    const span = Math.max(t1 - t0, 1e-9);
    const rough = (span * 100) / Math.max(widthPx, 1);
    const power = 10 ** Math.floor(Math.log10(rough));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough);
    const unit = [[1e9, "s"], [1e6, "ms"], [1e3, "µs"], [1, "ns"]].find(([scale]) => scale <= step * 10) || [1, "ns"];
    const decimals = Math.max(0, Math.ceil(-Math.log10(step / unit[0]) - 1e-9));
    const ticks = [];
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      ticks.push({ ns: t, label: `${(t / unit[0]).toFixed(Math.min(decimals, 6))} ${unit[1]}` });
    }
    return ticks;
  }

  // "#rrggbb" mixed with white: the colour of a bar that does not match the search.
  function faded(hex) {
    const match = /^#([0-9a-f]{6})$/i.exec(hex);
    if (!match) return hex;
    const value = parseInt(match[1], 16);
    const mix = (shift) => Math.round(((value >> shift) & 255) * 0.3 + 255 * 0.7);
    return `rgb(${mix(16)}, ${mix(8)}, ${mix(0)})`;
  }

  // A GET /api/traces/{id}/window answer -> the compact form buildModel reads, times after
  // `origin` (BigInt ns). An entry is a span (its span_id) or an aggregate of narrower spans
  // (span_id "", count, summed time, dominant name and level). A span's parent is linked when it
  // is in the same answer; its id is kept either way (parent_id, "" for a root or an aggregate),
  // so a span whose parent is outside the window does not read as a root.
  function windowColumns(answer, origin, defaultLevel) {
    const strings = [defaultLevel];
    const interned = new Map([[defaultLevel, 0]]);
    const intern = (text) => {
      if (!interned.has(text)) {
        interned.set(text, strings.length);
        strings.push(text);
      }
      return interned.get(text);
    };
    const { entries } = answer;
    const none = () => entries.map(() => -1);
    const position = new Map();
    entries.forEach((entry, k) => { if (entry.span_id) position.set(entry.span_id, k); });
    const attribute = (key) => entries.map((entry) => {
      const value = (entry.attributes || {})[attributeName(key)];
      return value === undefined ? -1 : intern(value);
    });
    return {
      origin_ns: String(origin), strings, warnings: [],
      span_id: entries.map((entry, k) => entry.span_id || `~${k}`), // aggregates get ids of their own
      parent: entries.map((entry) => (entry.parent_span_id && position.has(entry.parent_span_id) ? position.get(entry.parent_span_id) : -1)),
      parent_id: entries.map((entry) => entry.parent_span_id || ""),
      level: entries.map((entry) => intern(entry.level || defaultLevel)), depth: entries.map((entry) => Number(entry.depth)),
      name: entries.map((entry) => intern(entry.name)), service: entries.map((entry) => intern(entry.track)),
      start_ns: entries.map((entry) => Number(BigInt(entry.start_ns) - origin)),
      duration_ns: entries.map((entry) => Number(BigInt(entry.end_ns) - BigInt(entry.start_ns))),
      self_ns: entries.map((entry) => Number(entry.total_ns)),
      count: entries.map((entry) => (entry.span_id ? 0 : Number(entry.count))),
      attributes: Object.fromEntries(MODEL_ATTRIBUTES.map((key) =>
        [attributeName(key), WINDOW_LABEL_ATTRIBUTES.includes(key) ? attribute(key) : none()])),
    };
  }

  // The compact form cut to span `spanId`'s subtree (contiguous in pre-order), its times after
  // that span's start; null when the span is not in it. The compare page draws an evaluation so.
  function subtreeColumns(columns, spanId) {
    const root = columns.span_id.indexOf(spanId);
    if (root < 0) return null;
    let end = root + 1;
    while (end < columns.depth.length && columns.depth[end] > columns.depth[root]) end += 1;
    const cut = (values) => values.slice(root, end);
    const shift = columns.start_ns[root];
    return {
      ...columns, origin_ns: String(BigInt(columns.origin_ns) + BigInt(shift)), warnings: [],
      span_id: cut(columns.span_id), name: cut(columns.name), service: cut(columns.service), level: cut(columns.level),
      duration_ns: cut(columns.duration_ns), self_ns: cut(columns.self_ns),
      parent: cut(columns.parent).map((up) => (up < root ? -1 : up - root)),
      depth: cut(columns.depth).map((d) => d - columns.depth[root]),
      start_ns: cut(columns.start_ns).map((start) => start - shift),
      attributes: Object.fromEntries(Object.entries(columns.attributes).map(([key, values]) => [key, cut(values)])),
    };
  }

  // --- the view: window, scroll, selection, search --------------------------------------------

  function clampView(view, totalNs) {
    const total = Math.max(totalNs, MIN_WINDOW_NS);
    const margin = total * 0.05;
    const width = Math.min(Math.max(view.t1 - view.t0, MIN_WINDOW_NS), total + 2 * margin);
    const t0 = Math.min(Math.max(view.t0, -margin), total + margin - width);
    return { t0, t1: t0 + width };
  }

  function zoomAround(view, factor, anchorNs) {
    return { t0: anchorNs - (anchorNs - view.t0) * factor, t1: anchorNs + (view.t1 - anchorNs) * factor };
  }

  // The overview's pixels: for each of its first MINIMAP_ROWS depths, the level of the span last
  // drawn over each pixel column (+1; 0 for none), over the whole trace. One pass over the spans,
  // done when the width changes, not per frame.
  function overviewCells(model, widthPx) {
    const cells = new Uint8Array(MINIMAP_ROWS * widthPx);
    const k = widthPx / Math.max(model.totalNs, 1);
    for (let i = 0; i < model.count; i += 1) {
      const row = model.depth[i];
      if (row >= MINIMAP_ROWS) continue;
      const last = Math.min(widthPx - 1, Math.floor(model.ends[i] * k));
      for (let x = Math.max(0, Math.floor(model.starts[i] * k)); x <= last; x += 1) cells[row * widthPx + x] = model.level[i] + 1;
    }
    return cells;
  }

  // The timeline W/S/A/D move when a page has more than one: the last one pointed at, or created.
  let keyOwner = null;

  function createTimeline(options) {
    const { columns, levels, defaultLevel, onSelect } = options;
    const { fetchWindow, onViewMove } = options;
    const onViewChange = options.onViewChange || (() => {});
    let model = buildModel(columns, levels, defaultLevel);
    const overviewModel = model; // the whole trace (in windowed mode, its first, whole-trace window)
    // The time the view may cover: the trace, or more when it shares its axis with a longer one.
    const extentNs = Math.max(model.totalNs, options.extentNs || 0);
    const rootStyle = getComputedStyle(document.documentElement);
    const colours = levels.map((lvl) => rootStyle.getPropertyValue(`--${lvl}`).trim() || "#6b7280");
    const fadedColours = colours.map(faded);
    const canvas = document.createElement("canvas");
    const minimap = document.createElement("canvas");
    minimap.className = "minimap";
    minimap.setAttribute("data-testid", "minimap");
    const mini = minimap.getContext("2d");
    let overview = null; // overviewCells at the current width
    const element = document.createElement("div");
    element.className = "flame";
    element.setAttribute("data-testid", "timeline");
    element.tabIndex = 0;
    element.append(minimap, canvas);
    const ctx = canvas.getContext("2d");

    let view = clampView(options.initialView || { t0: 0, t1: extentNs }, extentNs);
    let announced = view; // the view onViewMove was last told of (or setView was given)
    let scrollY = 0;
    let selected = -1;
    let matches = null; // Uint8Array while a search is active
    let outlined = null; // Uint8Array while a set of spans (the critical path) is outlined
    let searchQuery = "";
    let outlineIds = [];
    let counters = []; // {title, times (ns after the model's origin), values, max}, drawn under the spans
    let widthPx = 0;
    let heightPx = 0;
    let mouseX = null;
    let drag = null;
    let framePending = false;
    let lastFrame = 0;
    let urlTimer = 0;
    const held = new Set();
    const drawMs = []; // recent draw costs, read by bench/ui.py
    let firstDrawAt = null; // performance.now() of the first complete frame, read by bench/ui.py
    let charWidth = 6;

    // --- layout ---
    function trackTops() {
      let y = 0;
      return model.tracks.map((track) => {
        const top = y;
        y += HEADER_H + (track.collapsed ? 0 : track.rows.length * ROW_H);
        return top;
      });
    }
    let tops = trackTops();
    const contentHeight = () => {
      const last = model.tracks.length - 1;
      return last < 0 ? 0 : tops[last] + HEADER_H + (model.tracks[last].collapsed ? 0 : model.tracks[last].rows.length * ROW_H);
    };
    // The span tracks scroll between the ruler and the counter tracks.
    const spansBottom = () => heightPx - counters.length * COUNTER_H;
    const scale = () => widthPx / (view.t1 - view.t0);
    const xOf = (ns) => (ns - view.t0) * scale();
    const nsAt = (x) => view.t0 + x / scale();

    const trackFor = (i) => model.tracks[model.trackOf[i]];
    const isShown = (i) => !trackFor(i).collapsed;
    function rowTop(i) {
      return RULER_H + tops[model.trackOf[i]] + HEADER_H + (model.depth[i] - trackFor(i).baseDepth) * ROW_H - scrollY;
    }

    // --- drawing ---
    function drawRuler() {
      ctx.fillStyle = "#f9fafb";
      ctx.fillRect(0, 0, widthPx, RULER_H);
      ctx.fillStyle = "#d8dce3";
      ctx.fillRect(0, RULER_H - 1, widthPx, 1);
      ctx.fillStyle = "#6b7280";
      for (const tick of niceTicks(view.t0, view.t1, widthPx)) {
        const x = Math.round(xOf(tick.ns)) + 0.5;
        ctx.fillRect(x, RULER_H - 8, 1, 8);
        ctx.fillText(tick.label, x + 3, 14);
      }
    }

    function drawGrid() {
      ctx.fillStyle = "#f1f3f6";
      for (const tick of niceTicks(view.t0, view.t1, widthPx)) ctx.fillRect(Math.round(xOf(tick.ns)), RULER_H, 1, heightPx);
    }

    function drawLabel(i, x0, x1, y) {
      const room = Math.min(x1, widthPx) - Math.max(x0, 0) - 6;
      if (room < 3 * charWidth) return;
      const label = model.labels[i];
      const fits = Math.floor(room / charWidth);
      ctx.fillText(label.length > fits ? `${label.slice(0, Math.max(1, fits - 1))}…` : label, Math.max(x0, 0) + 3, y + 12.5);
    }

    // Bar i's fill: an aggregate's sliver grey, else its level's colour (faded off the search).
    function barFill(i) {
      if (model.aggregateCount && model.aggregateCount[i]) return SLIVER;
      return matches && !matches[i] ? fadedColours[model.level[i]] : colours[model.level[i]];
    }

    function drawRow(row, y) {
      const { index, maxEnd } = row;
      const { starts, ends } = model;
      const k = scale();
      let sliverFrom = 0;
      let sliverTo = -Infinity;
      const flushSliver = () => {
        if (sliverTo === -Infinity) return;
        ctx.fillStyle = SLIVER;
        ctx.fillRect(sliverFrom, y + 1, Math.max(1, sliverTo - sliverFrom), ROW_H - 2);
        sliverTo = -Infinity;
      };
      for (let j = lowerBound(maxEnd, view.t0); j < index.length; j += 1) {
        const i = index[j];
        if (starts[i] > view.t1) break;
        if (ends[i] < view.t0) continue;
        const x0 = (starts[i] - view.t0) * k;
        const x1 = (ends[i] - view.t0) * k;
        if (x1 - x0 < 1) {
          if (x0 > sliverTo + 1) { flushSliver(); sliverFrom = x0; }
          sliverTo = Math.max(sliverTo, x1);
          continue;
        }
        flushSliver();
        const left = Math.max(x0, -2);
        const right = Math.min(x1, widthPx + 2);
        ctx.fillStyle = barFill(i);
        ctx.fillRect(left, y + 1, Math.max(1, right - left - 0.5), ROW_H - 2);
        if (matches && matches[i]) {
          ctx.strokeStyle = "#facc15";
          ctx.lineWidth = 2;
          ctx.strokeRect(left + 1, y + 2, right - left - 2, ROW_H - 4);
        }
        if (outlined && outlined[i]) {
          ctx.strokeStyle = OUTLINE;
          ctx.lineWidth = 2;
          ctx.strokeRect(left, y + 1, Math.max(2, right - left), ROW_H - 2);
        }
        ctx.fillStyle = matches && !matches[i] ? "#6b7280" : "#fff";
        drawLabel(i, x0, x1, y);
      }
      flushSliver();
    }

    function drawTrack(track, top) {
      ctx.fillStyle = track.isThread ? "#f9fafb" : "#eef0f4";
      ctx.fillRect(0, top, widthPx, HEADER_H);
      ctx.fillStyle = "#374151";
      ctx.fillText(`${track.collapsed ? "▸" : "▾"} ${track.title}`, track.isThread ? 16 : 4, top + 13);
      if (track.collapsed) return;
      track.rows.forEach((row, r) => {
        const y = top + HEADER_H + r * ROW_H;
        if (y + ROW_H >= RULER_H && y < spansBottom()) drawRow(row, y);
      });
    }

    function drawSelection() {
      if (selected < 0 || !isShown(selected)) return;
      const x0 = Math.max(xOf(model.starts[selected]), -2);
      const x1 = Math.min(xOf(model.ends[selected]), widthPx + 2);
      ctx.strokeStyle = "#111827";
      ctx.lineWidth = 2;
      ctx.strokeRect(x0, rowTop(selected) + 1, Math.max(2, x1 - x0), ROW_H - 2);
    }

    // A counter's samples as a line over a filled area, scaled to the series' maximum; the sample
    // before the window and the one after it are drawn too, so the line reaches both edges.
    function drawCounter(series, top) {
      ctx.fillStyle = "#fafafa";
      ctx.fillRect(0, top, widthPx, COUNTER_H);
      ctx.fillStyle = "#d8dce3";
      ctx.fillRect(0, top, widthPx, 1);
      const { times, values, max } = series;
      const first = Math.max(0, lowerBound(times, view.t0) - 1);
      const last = Math.min(times.length - 1, lowerBound(times, view.t1));
      const base = top + COUNTER_H - 2;
      const yOf = (value) => base - (max > 0 ? (value / max) * (COUNTER_H - 16) : 0);
      if (last >= first) {
        ctx.beginPath();
        ctx.moveTo(xOf(times[first]), base);
        for (let j = first; j <= last; j += 1) ctx.lineTo(xOf(times[j]), yOf(values[j]));
        ctx.lineTo(xOf(times[last]), base);
        ctx.fillStyle = COUNTER_FILL;
        ctx.fill();
        ctx.beginPath();
        for (let j = first; j <= last; j += 1) ctx.lineTo(xOf(times[j]), yOf(values[j]));
        ctx.strokeStyle = COUNTER_LINE;
        ctx.lineWidth = 1.5;
        ctx.stroke();
      }
      ctx.fillStyle = "#374151";
      ctx.fillText(`${series.title} · max ${Number(max.toPrecision(3))}`, 4, top + 12);
    }

    function drawCounters() {
      counters.forEach((series, k) => drawCounter(series, spansBottom() + k * COUNTER_H));
    }

    function drawDragRange() {
      if (!drag || drag.mode !== "range") return;
      ctx.fillStyle = "rgba(29, 78, 216, 0.15)";
      ctx.fillRect(Math.min(drag.x0, drag.x), RULER_H, Math.abs(drag.x - drag.x0), heightPx);
    }

    // The overview, the parts of it outside the window dimmed and the window outlined.
    function drawMinimap() {
      const dpr = window.devicePixelRatio || 1;
      mini.setTransform(dpr, 0, 0, dpr, 0, 0);
      mini.fillStyle = "#f9fafb";
      mini.fillRect(0, 0, widthPx, MINIMAP_H);
      const rowH = (MINIMAP_H - 4) / MINIMAP_ROWS;
      for (let row = 0; row < MINIMAP_ROWS; row += 1) {
        for (let x = 0; x < widthPx;) {
          const cell = overview[row * widthPx + x];
          let end = x + 1;
          while (end < widthPx && overview[row * widthPx + end] === cell) end += 1;
          if (cell) {
            mini.fillStyle = colours[cell - 1];
            mini.fillRect(x, 2 + row * rowH, end - x, rowH - 1);
          }
          x = end;
        }
      }
      const k = widthPx / Math.max(overviewModel.totalNs, 1);
      const x0 = Math.max(0, view.t0 * k);
      const x1 = Math.min(widthPx, view.t1 * k);
      mini.fillStyle = "rgba(17, 24, 39, 0.25)";
      mini.fillRect(0, 0, x0, MINIMAP_H);
      mini.fillRect(x1, 0, widthPx - x1, MINIMAP_H);
      mini.strokeStyle = "#1d4ed8";
      mini.lineWidth = 2;
      mini.strokeRect(x0, 1, Math.max(2, x1 - x0), MINIMAP_H - 2);
    }

    function draw() {
      const started = performance.now();
      const dpr = window.devicePixelRatio || 1;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, widthPx, heightPx);
      ctx.font = FONT;
      drawGrid();
      ctx.save();
      ctx.beginPath();
      ctx.rect(0, RULER_H, widthPx, spansBottom() - RULER_H);
      ctx.clip();
      model.tracks.forEach((track, t) => {
        const top = RULER_H + tops[t] - scrollY;
        const bottom = top + HEADER_H + (track.collapsed ? 0 : track.rows.length * ROW_H);
        if (bottom >= RULER_H && top < spansBottom()) drawTrack(track, top);
      });
      drawSelection();
      ctx.restore();
      drawCounters();
      drawDragRange();
      drawRuler();
      drawMinimap();
      drawMs.push(performance.now() - started);
      // Once a frame, whatever moved the view (keys, wheel, drag): timelines sharing an axis follow.
      if (onViewMove && (view.t0 !== announced.t0 || view.t1 !== announced.t1)) {
        announced = view;
        onViewMove({ ...view });
      }
      if (drawMs.length > 2000) drawMs.splice(0, 1000);
      if (widthPx > 0 && firstDrawAt === null) {
        firstDrawAt = performance.now();
        element.setAttribute("data-ready", "1");
      }
    }

    // --- frames: one draw per animation frame; held keys move the view every frame ---
    function applyHeldKeys(dt) {
      const anchor = mouseX === null ? (view.t0 + view.t1) / 2 : nsAt(mouseX);
      if (held.has("w")) view = zoomAround(view, Math.exp(-KEY_ZOOM_PER_MS * dt), anchor);
      if (held.has("s")) view = zoomAround(view, Math.exp(KEY_ZOOM_PER_MS * dt), anchor);
      const pan = (view.t1 - view.t0) * KEY_PAN_PER_MS * dt;
      if (held.has("a")) view = { t0: view.t0 - pan, t1: view.t1 - pan };
      if (held.has("d")) view = { t0: view.t0 + pan, t1: view.t1 + pan };
      view = clampView(view, extentNs);
    }

    function frame(now) {
      framePending = false;
      if (held.size) {
        applyHeldKeys(Math.min(now - lastFrame, 50));
        lastFrame = now;
        requestFrame();
      }
      draw();
    }

    function requestFrame() {
      if (framePending) return;
      framePending = true;
      requestAnimationFrame(frame);
    }

    function viewChanged() {
      view = clampView(view, extentNs);
      requestFrame();
      clearTimeout(urlTimer);
      urlTimer = setTimeout(() => onViewChange(currentView()), URL_DEBOUNCE_MS);
      scheduleWindowRead();
    }

    // --- windowed reads: the model is replaced by each window's answer (the latest one wins) ---
    let windowTimer = 0;
    let windowRequest = 0;
    let windowReads = 0; // answers applied, read by tests
    let lastReadKey = ""; // the view and width of the latest read
    let pendingId = null; // a span goToSpan selects once a window read brings it
    function scheduleWindowRead() {
      if (!fetchWindow) return;
      clearTimeout(windowTimer);
      // A failed read leaves the last window drawn; the next view change tries again.
      windowTimer = setTimeout(() => readWindow().catch((error) => console.warn("window read failed:", error)), WINDOW_DEBOUNCE_MS);
    }

    async function readWindow() {
      const key = `${view.t0} ${view.t1} ${widthPx}`;
      if (key === lastReadKey) return; // a selection re-sends the view (for the URL): nothing to read
      lastReadKey = key;
      windowRequest += 1;
      const request = windowRequest;
      const width = view.t1 - view.t0;
      const t0 = Math.max(0, view.t0 - WINDOW_MARGIN * width);
      const t1 = Math.min(overviewModel.totalNs, view.t1 + WINDOW_MARGIN * width);
      const pixels = Math.max(1, Math.round((widthPx * (t1 - t0)) / width));
      const windowed = await fetchWindow(t0, t1, pixels);
      if (request === windowRequest) replaceModel(buildModel(windowed, levels, defaultLevel));
    }

    // Keeps what the user set across the swap: collapsed tracks, selection, search, outline.
    function replaceModel(next) {
      const collapsed = new Set(model.tracks.filter((track) => track.collapsed).map((track) => track.title));
      const selectedId = selected >= 0 ? model.spanIds[selected] : null;
      model = next;
      model.totalNs = overviewModel.totalNs;
      for (const track of model.tracks) track.collapsed = collapsed.has(track.title);
      tops = trackTops();
      selected = selectedId !== null && model.byId.has(selectedId) ? model.byId.get(selectedId) : -1;
      setSearch(searchQuery);
      setOutline(outlineIds);
      windowReads += 1;
      scrollBy(0);
      if (pendingId !== null && model.byId.has(pendingId)) {
        const i = model.byId.get(pendingId);
        pendingId = null;
        select(i, { reveal: true });
      }
    }

    // Selects span `spanId`, which lasts [start, end] (ns after the origin): at once when the model
    // holds it as a span of its own, else (a windowed read holding it merged, or not at all) once
    // the read of the view fitted onto it brings it.
    function goToSpan(spanId, start, end) {
      const i = model.byId.get(spanId);
      if (i !== undefined && !(model.aggregateCount && model.aggregateCount[i] > 0)) {
        pendingId = null;
        select(i, { reveal: true });
        return;
      }
      pendingId = spanId;
      view = fitView(start, end);
      viewChanged();
    }

    function scrollBy(dy) {
      const max = Math.max(0, contentHeight() - (spansBottom() - RULER_H));
      scrollY = Math.min(Math.max(scrollY + dy, 0), max);
      requestFrame();
    }

    // --- hit testing ---
    function trackAt(y) {
      if (y >= spansBottom()) return null;
      const contentY = y - RULER_H + scrollY;
      for (let t = model.tracks.length - 1; t >= 0; t -= 1) {
        if (contentY >= tops[t]) return { t, offset: contentY - tops[t] };
      }
      return null;
    }

    function spanAt(x, y) {
      const hit = trackAt(y);
      if (!hit || hit.offset < HEADER_H) return -1;
      const track = model.tracks[hit.t];
      const row = track.collapsed ? null : track.rows[Math.floor((hit.offset - HEADER_H) / ROW_H)];
      if (!row) return -1;
      const t = nsAt(x);
      const slop = 3 / scale();
      let best = -1;
      let bestDistance = Infinity;
      for (let j = lowerBound(row.maxEnd, t - slop); j < row.index.length; j += 1) {
        const i = row.index[j];
        if (model.starts[i] > t + slop) break;
        const distance = Math.max(model.starts[i] - t, t - model.ends[i], 0);
        if (distance <= slop && distance < bestDistance) { best = i; bestDistance = distance; }
      }
      return best;
    }

    // --- selection and search ---
    // The view onto [start, end] (ns after the origin): kept when the interval is in it and at
    // least 4 px wide, else centred on it at between 1.5 and 20 times its width.
    function fitView(start, end) {
      const width = view.t1 - view.t0;
      const spanWidth = end - start;
      if (start >= view.t0 && end <= view.t1 && spanWidth * scale() >= 4) return view;
      const fitted = Math.max(spanWidth * 1.5, Math.min(width, spanWidth * 20), MIN_WINDOW_NS);
      const middle = (start + end) / 2;
      return { t0: middle - fitted / 2, t1: middle + fitted / 2 };
    }

    function reveal(i) {
      const track = trackFor(i);
      if (track.collapsed) {
        track.collapsed = false;
        tops = trackTops();
      }
      view = fitView(model.starts[i], model.ends[i]);
      const y = rowTop(i);
      if (y < RULER_H + HEADER_H || y + ROW_H > spansBottom()) scrollBy(y - (RULER_H + spansBottom()) / 2);
      viewChanged();
    }

    function select(i, options) {
      selected = i;
      if (i >= 0 && options && options.reveal) reveal(i);
      requestFrame();
      onSelect(i);
      viewChanged();
    }

    function setSearch(query) {
      searchQuery = query;
      const needle = query.trim().toLowerCase();
      if (!needle) {
        matches = null;
        requestFrame();
        return 0;
      }
      matches = new Uint8Array(model.count);
      let count = 0;
      model.labels.forEach((label, i) => {
        if (label.toLowerCase().includes(needle) || model.strings[model.nameOf[i]].toLowerCase().includes(needle)) {
          matches[i] = 1;
          count += 1;
        }
      });
      requestFrame();
      return count;
    }

    // The next (direction 1) or previous (-1) match after the selection, in pre-order, wrapping.
    function selectMatch(direction) {
      if (!matches) return -1;
      const n = model.count;
      for (let step = 1; step <= n; step += 1) {
        const i = (((selected < 0 && direction < 0 ? 0 : selected) + direction * step) % n + n) % n;
        if (matches[i]) {
          select(i, { reveal: true });
          return i;
        }
      }
      return -1;
    }

    // Outlines the spans with these ids (those this trace holds); an empty list clears it.
    function setOutline(spanIds) {
      outlineIds = spanIds;
      const indexes = spanIds.map((id) => model.byId.get(id)).filter((i) => i !== undefined);
      outlined = indexes.length ? new Uint8Array(model.count) : null;
      for (const i of indexes) outlined[i] = 1;
      requestFrame();
    }

    // Counter tracks: [{title, times, values}] with times in ns after the model's origin, sorted.
    function setCounters(list) {
      counters = list.map((series) => ({ ...series, max: series.values.reduce((a, b) => Math.max(a, b), 0) }));
      scrollBy(0);
    }

    function currentView() {
      return { startNs: Math.round(view.t0), endNs: Math.round(view.t1), selected: selected >= 0 ? model.spanIds[selected] : null };
    }

    // --- input ---
    function isTyping(event) {
      const tag = event.target && event.target.tagName;
      return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT";
    }

    function onKeyDown(event) {
      const key = event.key.toLowerCase();
      if (keyOwner !== keysToken || !"wasd".includes(key) || key.length !== 1 || isTyping(event) || event.ctrlKey || event.metaKey || event.altKey) return;
      event.preventDefault();
      if (held.has(key)) return;
      held.add(key);
      applyHeldKeys(KEY_TAP_MS);
      lastFrame = performance.now();
      viewChanged();
    }

    function onKeyUp(event) {
      held.delete(event.key.toLowerCase());
      viewChanged();
    }

    function onWheel(event) {
      event.preventDefault();
      const unit = event.deltaMode === 1 ? 16 : event.deltaMode === 2 ? heightPx : 1;
      const dx = event.deltaX * unit;
      const dy = event.deltaY * unit;
      if (event.shiftKey) {
        scrollBy(dy || dx);
      } else if (Math.abs(dx) > Math.abs(dy)) {
        view = { t0: view.t0 + dx / scale(), t1: view.t1 + dx / scale() };
        viewChanged();
      } else {
        view = zoomAround(view, Math.exp(dy * 0.002), nsAt(event.offsetX));
        viewChanged();
      }
    }

    function onPointerDown(event) {
      if (event.button !== 0) return;
      canvas.setPointerCapture(event.pointerId);
      const mode = event.shiftKey || event.offsetY < RULER_H ? "range" : "pan";
      drag = { mode, x0: event.offsetX, y0: event.offsetY, x: event.offsetX, y: event.offsetY, view, scrollY, moved: false };
    }

    function onPointerMove(event) {
      mouseX = event.offsetX;
      if (!drag) return;
      drag.x = event.offsetX;
      drag.y = event.offsetY;
      drag.moved = drag.moved || Math.hypot(drag.x - drag.x0, drag.y - drag.y0) > CLICK_SLOP_PX;
      if (drag.mode === "pan" && drag.moved) {
        const shift = (drag.x - drag.x0) / (widthPx / (drag.view.t1 - drag.view.t0));
        view = { t0: drag.view.t0 - shift, t1: drag.view.t1 - shift };
        scrollY = drag.scrollY;
        scrollBy(drag.y0 - drag.y);
        viewChanged();
      } else {
        requestFrame();
      }
    }

    // A press or drag on the overview centres the window (its width kept) under the pointer.
    function onMinimapPointer(event) {
      if (event.type === "pointerdown") minimap.setPointerCapture(event.pointerId);
      else if (!minimap.hasPointerCapture(event.pointerId)) return;
      const centre = (event.offsetX / widthPx) * overviewModel.totalNs;
      const half = (view.t1 - view.t0) / 2;
      view = { t0: centre - half, t1: centre + half };
      viewChanged();
    }

    function onClick(x, y) {
      const hit = trackAt(y);
      if (hit && y >= RULER_H && hit.offset < HEADER_H) {
        model.tracks[hit.t].collapsed = !model.tracks[hit.t].collapsed;
        tops = trackTops();
        scrollBy(0);
        return;
      }
      select(spanAt(x, y));
    }

    function onPointerUp() {
      if (!drag) return;
      const done = drag;
      drag = null;
      if (!done.moved) onClick(done.x0, done.y0);
      else if (done.mode === "range" && Math.abs(done.x - done.x0) > CLICK_SLOP_PX) {
        view = { t0: nsAt(Math.min(done.x0, done.x)), t1: nsAt(Math.max(done.x0, done.x)) };
        viewChanged();
      }
      requestFrame();
    }

    function resize() {
      const dpr = window.devicePixelRatio || 1;
      widthPx = element.clientWidth;
      heightPx = element.clientHeight - MINIMAP_H;
      minimap.width = Math.round(widthPx * dpr);
      minimap.height = Math.round(MINIMAP_H * dpr);
      minimap.style.width = `${widthPx}px`;
      minimap.style.height = `${MINIMAP_H}px`;
      overview = overviewCells(overviewModel, widthPx);
      canvas.width = Math.round(widthPx * dpr);
      canvas.height = Math.round(heightPx * dpr);
      canvas.style.width = `${widthPx}px`;
      canvas.style.height = `${heightPx}px`;
      ctx.font = FONT;
      charWidth = ctx.measureText("abcdefghijklmnopqrstuvwxyz0123456789").width / 36;
      scrollBy(0);
      draw();
      scheduleWindowRead(); // at the canvas's own resolution
    }

    const observer = new ResizeObserver(resize);
    observer.observe(element);
    canvas.addEventListener("wheel", onWheel, { passive: false });
    minimap.addEventListener("pointerdown", onMinimapPointer);
    minimap.addEventListener("pointermove", onMinimapPointer);
    canvas.addEventListener("pointerdown", onPointerDown);
    canvas.addEventListener("pointermove", onPointerMove);
    canvas.addEventListener("pointerup", onPointerUp);
    canvas.addEventListener("pointerleave", () => { mouseX = null; });
    const keysToken = {};
    keyOwner = keysToken;
    window.addEventListener("keydown", onKeyDown);
    window.addEventListener("keyup", onKeyUp);
    element.addEventListener("pointerenter", () => { keyOwner = keysToken; });
    const releaseKeys = () => held.clear(); // a key released in another window never sends keyup here
    window.addEventListener("blur", releaseKeys);

    if (options.selectedId && model.byId.has(options.selectedId)) selected = model.byId.get(options.selectedId);

    return {
      element,
      get model() { return model; },
      windowReads: () => windowReads,
      // The aggregates' ids in the current window (windowed reads), for tests.
      aggregateIds: () => (model.aggregateCount ? model.spanIds.filter((_, i) => model.aggregateCount[i] > 0) : []),
      select, setSearch, selectMatch, goToSpan, currentView, setOutline, setCounters,
      // Moves the view without telling onViewMove (it is how a linked timeline follows).
      setView(next) {
        view = clampView(next, extentNs);
        announced = view;
        requestFrame();
        scheduleWindowRead();
      },
      counterTitles: () => counters.map((series) => series.title), // for tests
      selectId(spanId) {
        const i = model.byId.get(spanId);
        if (i !== undefined) select(i, { reveal: true });
      },
      // The outlined spans' ids, for tests.
      outlinedIds: () => (outlined ? model.spanIds.filter((_, i) => outlined[i]) : []),
      childrenOf: (i) => childrenOf(model, i),
      // The fill span `spanId`'s bar is drawn with; null when it is not in the model. For tests.
      barFill(spanId) {
        const i = model.byId.get(spanId);
        return i === undefined ? null : barFill(i);
      },
      // Where span `spanId`'s bar is drawn, in page (client) pixels; null when not drawn.
      barRect(spanId) {
        const i = model.byId.get(spanId);
        if (i === undefined || !isShown(i)) return null;
        const box = canvas.getBoundingClientRect();
        const x0 = Math.max(xOf(model.starts[i]), 0);
        const x1 = Math.min(xOf(model.ends[i]), widthPx);
        const y = rowTop(i);
        if (x1 <= x0 || y + ROW_H <= RULER_H || y >= spansBottom()) return null;
        return { x: box.left + x0, y: box.top + y + 1, width: x1 - x0, height: ROW_H - 2 };
      },
      view: () => ({ ...view }),
      drawTimes: () => drawMs.slice(),
      firstDrawAt: () => firstDrawAt,
      destroy() {
        observer.disconnect();
        window.removeEventListener("keydown", onKeyDown);
        window.removeEventListener("keyup", onKeyUp);
        window.removeEventListener("blur", releaseKeys);
        if (keyOwner === keysToken) keyOwner = null;
        clearTimeout(urlTimer);
        clearTimeout(windowTimer);
        windowRequest += 1; // an answer still on its way is dropped
      },
    };
  }

  window.mlscopeTimelineLib = { createTimeline, buildModel, windowColumns, subtreeColumns, childrenOf, niceTicks, spanLabel, clampView };
})();
