// mlscope viewer: the trace list, one trace's timeline, and a SQL page, over the JSON API.
//
// Shape (after jaeger-ui): API data -> pure transforms (layoutRows, axisTicks, ...) -> DOM.
// Every string from the API reaches the page through textContent or a text node, never as
// markup; the server's Content-Security-Policy backs that up.
"use strict";

(() => {
  const LEVELS = ["application", "model", "layer", "library", "hardware"];

  // --- pure transforms (no DOM) ---------------------------------------------------------------

  // Nanosecond times since the epoch exceed 2^53: keep integers exact as BigInt, reading their
  // source text where the browser offers it.
  function parseJson(text) {
    return JSON.parse(text, (key, value, context) => {
      if (typeof value === "number" && !Number.isSafeInteger(value) && Number.isInteger(value)
          && context && /^-?\d+$/.test(context.source)) {
        return BigInt(context.source);
      }
      return value;
    });
  }

  function toBig(value) {
    return typeof value === "bigint" ? value : BigInt(Math.round(Number(value)));
  }

  function formatDuration(ns) {
    const n = Number(ns);
    const units = [[1e9, "s"], [1e6, "ms"], [1e3, "µs"]];
    for (const [scale, unit] of units) {
      if (Math.abs(n) >= scale) return `${Number((n / scale).toPrecision(3))} ${unit}`;
    }
    return `${n} ns`;
  }

  function formatTime(ns) {
    return new Date(Number(toBig(ns) / 1000000n)).toISOString().replace("T", " ").replace("Z", " UTC");
  }

  function levelOf(span) {
    return LEVELS.includes(span.level) ? span.level : "application";
  }

  // Spans in pre-order -> one row per span: where its bar sits on the trace's time axis.
  function layoutRows(spans) {
    if (!spans.length) return { startNs: 0n, endNs: 0n, rows: [] };
    let startNs = toBig(spans[0].start_ns);
    let endNs = toBig(spans[0].end_ns);
    for (const span of spans) {
      const s = toBig(span.start_ns);
      const e = toBig(span.end_ns);
      if (s < startNs) startNs = s;
      if (e > endNs) endNs = e;
    }
    const total = Number(endNs - startNs);
    const percent = (ns) => (total > 0 ? Math.min(100, Math.max(0, (Number(ns) / total) * 100)) : 0);
    const rows = spans.map((span) => {
      const offsetPct = percent(toBig(span.start_ns) - startNs);
      const widthPct = total > 0 ? Math.min(100 - offsetPct, percent(toBig(span.end_ns) - toBig(span.start_ns))) : 100;
      return {
        span,
        depth: Number(span.depth) || 0,
        offsetPct,
        widthPct,
        level: levelOf(span),
        label: `${span.name} ${formatDuration(span.duration_ns)}`,
      };
    });
    return { startNs, endNs, rows };
  }

  function axisTicks(totalNs, count) {
    const ticks = [];
    for (let i = 0; i < count; i += 1) {
      const pct = (100 * i) / count;
      ticks.push({ pct, label: formatDuration((Number(totalNs) * i) / count) });
    }
    return ticks;
  }

  // ?levels=a,b -> the set of levels shown (all when absent).
  function parseLevels(search) {
    const text = new URLSearchParams(search).get("levels");
    if (text === null || text === "") return new Set(LEVELS);
    return new Set(text.split(",").filter((level) => LEVELS.includes(level)));
  }

  function levelsParam(shown) {
    return LEVELS.every((level) => shown.has(level)) ? null : LEVELS.filter((level) => shown.has(level)).join(",");
  }

  // --- DOM helpers ----------------------------------------------------------------------------

  // el("a", {href: "/x", class: "c"}, "text", child): attributes set one by one, strings
  // become text nodes.
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function table(headers, rows, className) {
    return el("table", { class: `grid ${className || ""}` },
      el("thead", null, el("tr", null, ...headers.map((h) => el("th", null, h)))),
      el("tbody", null, ...rows));
  }

  function keyValueTable(object) {
    const entries = Object.entries(object || {});
    if (!entries.length) return el("p", { class: "muted" }, "none");
    return table(["key", "value"], entries.map(([k, v]) =>
      el("tr", null, el("td", null, k), el("td", null, typeof v === "string" ? v : JSON.stringify(v)))));
  }

  async function fetchJson(url, options) {
    const response = await fetch(url, options);
    const body = parseJson(await response.text());
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  function showError(main, error) {
    main.replaceChildren(el("p", { class: "error" }, String(error.message || error)));
  }

  // --- pages ----------------------------------------------------------------------------------

  async function renderTraceList(main) {
    document.title = "mlscope: traces";
    const { traces } = await fetchJson("/api/traces?limit=200");
    if (!traces.length) {
      main.replaceChildren(el("h1", null, "Traces"), el("p", { class: "muted" }, "No traces yet."));
      return;
    }
    const rows = traces.map((trace) => el("tr", null,
      el("td", null, el("a", { class: "trace-link", href: `/traces/${encodeURIComponent(trace.trace_id)}` },
        trace.root_name || "(no root span)")),
      el("td", null, trace.service),
      el("td", null, formatTime(trace.start_ns)),
      el("td", { class: "num" }, formatDuration(trace.duration_ns)),
      el("td", { class: "num" }, String(trace.span_count))));
    main.replaceChildren(el("h1", null, "Traces"),
      table(["root span", "service", "start", "duration", "spans"], rows, "traces"));
  }

  function renderDetail(panel, span, startNs) {
    panel.replaceChildren(
      el("h2", null, span.name),
      table(["field", "value"], [
        ["span id", span.span_id], ["parent span id", span.parent_span_id || "(root)"],
        ["service", span.service], ["level", span.level], ["kind", span.kind],
        ["starts at", `+${formatDuration(toBig(span.start_ns) - startNs)}`],
        ["duration", formatDuration(span.duration_ns)], ["self time", formatDuration(span.self_ns)],
        ["status", [span.status.code, span.status.message].filter(Boolean).join(": ")],
      ].map(([k, v]) => el("tr", null, el("td", null, k), el("td", null, String(v))))),
      el("h3", null, "Attributes"), keyValueTable(span.attributes),
      el("h3", null, "Resource"), keyValueTable(span.resource),
      el("h3", null, "Events"),
      span.events.length
        ? table(["at", "name", "attributes"], span.events.map((e) => el("tr", null,
          el("td", null, `+${formatDuration(toBig(e.time_ns) - startNs)}`), el("td", null, e.name),
          el("td", null, JSON.stringify(e.attributes)))))
        : el("p", { class: "muted" }, "none"));
  }

  function timelineView(layout, detail) {
    const total = layout.endNs - layout.startNs;
    const axis = el("div", { class: "axis" }, el("div", { class: "name" }, "span"),
      el("div", { class: "track" }, ...axisTicks(total, 5).map((tick) => {
        const node = el("div", { class: "tick" }, tick.label);
        node.style.left = `${tick.pct}%`;
        return node;
      })));
    const rows = layout.rows.map((row) => {
      const name = el("div", { class: "name", title: row.span.name }, row.span.name);
      name.style.paddingLeft = `${6 + row.depth * 14}px`;
      const bar = el("div", { class: `bar level-${row.level}` });
      bar.style.left = `${row.offsetPct}%`;
      bar.style.width = `${row.widthPct}%`;
      const duration = el("span", { class: "dur" }, formatDuration(row.span.duration_ns));
      // Past the bar's end; where that would run off the track, before its start; where
      // neither side has room, inside the bar.
      if (row.offsetPct + row.widthPct <= 80) duration.style.left = `${row.offsetPct + row.widthPct}%`;
      else if (row.offsetPct >= 20) duration.style.right = `${100 - row.offsetPct}%`;
      else {
        duration.classList.add("inside");
        duration.style.left = `${row.offsetPct}%`;
      }
      const node = el("div", { class: "row", role: "button", tabindex: "0", title: row.label },
        name, el("div", { class: "track" }, bar, duration));
      const select = () => {
        for (const other of node.parentNode.querySelectorAll(".row.selected")) other.classList.remove("selected");
        node.classList.add("selected");
        renderDetail(detail, row.span, layout.startNs);
      };
      node.addEventListener("click", select);
      node.addEventListener("keydown", (event) => { if (event.key === "Enter") select(); });
      return node;
    });
    return el("div", { class: "timeline" }, axis, ...rows);
  }

  function levelFilter(shown, onChange) {
    const boxes = LEVELS.map((level) => {
      const box = el("input", { type: "checkbox", name: "level", value: level });
      box.checked = shown.has(level);
      return box;
    });
    for (const box of boxes) {
      box.addEventListener("change", () => onChange(new Set(boxes.filter((b) => b.checked).map((b) => b.value))));
    }
    const labels = boxes.map((box) => el("label", null, box, el("span", { class: `swatch level-${box.value}` }), box.value));
    return el("div", { class: "levels" }, el("span", { class: "muted" }, "levels:"), ...labels);
  }

  async function renderTrace(main, traceId) {
    document.title = `mlscope: trace ${traceId}`;
    const shown = parseLevels(location.search);
    const param = levelsParam(shown);
    const base = `/api/traces/${encodeURIComponent(traceId)}`;
    const trace = shown.size
      ? await fetchJson(param === null ? base : `${base}?levels=${encodeURIComponent(param)}`)
      : { trace_id: traceId, spans: [], warnings: [] };
    const layout = layoutRows(trace.spans);
    const detail = el("aside", { class: "detail" }, el("p", { class: "muted" }, "Click a span for its details."));
    const root = trace.spans[0];
    const onLevels = (levels) => {
      const next = levelsParam(levels);
      const url = new URL(location.href);
      if (next === null) url.searchParams.delete("levels");
      else url.searchParams.set("levels", next);
      history.replaceState(null, "", url);
      renderTrace(main, traceId).catch((error) => showError(main, error));
    };
    const parts = [
      el("h1", null, root ? root.name : "(no spans at these levels)"),
      el("div", { class: "meta" },
        el("span", null, `trace ${trace.trace_id}`),
        root ? el("span", null, formatTime(layout.startNs)) : null,
        el("span", { class: "total" }, formatDuration(layout.endNs - layout.startNs)),
        el("span", null, `${trace.spans.length} spans`),
        el("a", { href: `${base}/export?format=perfetto` }, "Perfetto JSON"),
        el("a", { href: `${base}/export?format=jaeger` }, "Jaeger JSON")),
      levelFilter(shown, onLevels),
      trace.warnings.length
        ? el("details", { class: "warnings" }, el("summary", null, `${trace.warnings.length} warnings`),
          el("ul", null, ...trace.warnings.map((w) => el("li", null, w))))
        : null,
      timelineView(layout, detail),
      detail];
    main.replaceChildren(...parts.filter((part) => part !== null));
  }

  function renderSql(main) {
    document.title = "mlscope: SQL";
    const query = el("textarea", { id: "sql-query", spellcheck: "false" });
    query.value = "SELECT name, count() AS spans, avg(duration_ns) AS avg_ns\nFROM spans\nGROUP BY name\nORDER BY spans DESC\nLIMIT 20";
    const run = el("button", { id: "sql-run", type: "button" }, "Run");
    const note = el("span", { class: "muted" }, "Ctrl+Enter runs; read-only, one statement.");
    const output = el("div", { id: "sql-output" });
    const execute = async () => {
      run.disabled = true;
      try {
        const result = await fetchJson("/api/sql", {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ query: query.value }),
        });
        const rows = result.rows.map((row) => el("tr", null, ...row.map((value) =>
          el("td", null, typeof value === "string" ? value : JSON.stringify(value, (k, v) => (typeof v === "bigint" ? v.toString() : v))))));
        output.replaceChildren(
          el("p", { class: "muted" }, `${result.rows.length} rows${result.truncated ? " (truncated at the limit)" : ""}`),
          table(result.columns.map((c) => `${c.name} ${c.type}`), rows, "sql-result"));
      } catch (error) {
        output.replaceChildren(el("p", { class: "error" }, String(error.message || error)));
      } finally {
        run.disabled = false;
      }
    };
    run.addEventListener("click", execute);
    query.addEventListener("keydown", (event) => { if (event.key === "Enter" && event.ctrlKey) execute(); });
    main.replaceChildren(el("h1", null, "SQL"), query, el("div", { class: "sql-bar" }, run, note), output);
  }

  function route() {
    const main = document.getElementById("main");
    const path = location.pathname;
    const traceMatch = path.match(/^\/traces\/([^/]+)\/?$/);
    let page;
    if (path === "/") page = renderTraceList(main);
    else if (traceMatch) page = renderTrace(main, decodeURIComponent(traceMatch[1]));
    else if (path === "/sql") page = Promise.resolve(renderSql(main));
    else page = Promise.reject(new Error(`no page at ${path}`));
    page.catch((error) => showError(main, error));
  }

  window.mlscopeViewer = { layoutRows, axisTicks, formatDuration, parseLevels, levelsParam, parseJson };
  route();
})();
