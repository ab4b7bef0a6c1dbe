// mlscope viewer: the trace list, one trace's timeline, evaluations, compare, and a SQL page,
// over the JSON API.
//
// Shape (after jaeger-ui): API data -> pure transforms (parseLevels, sortDiffRows, ...) -> DOM;
// the trace page's canvas timeline is timeline.js.
// Every string from the API reaches the page through textContent or a text node, never as
// markup; the server's Content-Security-Policy backs that up.
"use strict";

(() => {
  // From GET /api/conventions (mlscope.conventions), read once before the first page renders.
  let LEVELS = [];
  let DEFAULT_LEVEL = "";

  // --- pure transforms (no DOM) ---------------------------------------------------------------

  // Nanosecond times since the epoch exceed 2^53: keep integers exact as BigInt, reading their
  // source text where the browser offers it. A `content_hash` (a UInt64 the API sends as a
  // number) names a span copy and is never computed with: it is kept as its digits, a string.
  function parseJson(text) {
    return JSON.parse(text, (key, value, context) => {
      if (key === "content_hash" && typeof value === "number") {
        return context && /^\d+$/.test(context.source) ? context.source : String(value);
      }
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

  // ?levels=a,b -> the set of levels shown (all when absent).
  function parseLevels(search) {
    const text = new URLSearchParams(search).get("levels");
    if (text === null || text === "") return new Set(LEVELS);
    return new Set(text.split(",").filter((level) => LEVELS.includes(level)));
  }

  function levelsParam(shown) {
    return LEVELS.every((level) => shown.has(level)) ? null : LEVELS.filter((level) => shown.has(level)).join(",");
  }


  // --- evaluations and compare: pure transforms --------------------------------------------------

  const EVALUATION_FILTERS = ["model", "framework", "batch_size", "system", "level", "scenario"];
  const TRACE_ID = /^[0-9a-f]{32}$/;
  const EVALUATION_ID = /^[0-9a-f]{16}$/; // an evaluation row's span_id

  function formatNumber(value, digits) {
    if (value === null || value === undefined || Number.isNaN(Number(value))) return "—";
    return String(Number(Number(value).toPrecision(digits || 4)));
  }

  function formatRatio(ratio) {
    return ratio === null ? "—" : `${Number(ratio.toPrecision(3))}×`;
  }

  // ?model=&framework=&batch_size= -> {model, framework, batch_size} (empty ones left out).
  function parseEvaluationFilter(search) {
    const params = new URLSearchParams(search);
    const filter = {};
    for (const name of EVALUATION_FILTERS) {
      const value = (params.get(name) || "").trim();
      if (value !== "") filter[name] = value;
    }
    return filter;
  }

  // The filter -> "?a=b&..." in a fixed order, or "" when nothing is filtered.
  function evaluationFilterQuery(filter) {
    const params = new URLSearchParams();
    for (const name of EVALUATION_FILTERS) {
      const value = filter[name] === undefined || filter[name] === null ? "" : String(filter[name]).trim();
      if (value !== "") params.set(name, value);
    }
    const text = params.toString();
    return text ? `?${text}` : "";
  }

  const EVALUATION_COLUMNS = [
    ["model", (e) => e.model], ["version", (e) => e.model_version], ["framework", (e) => e.framework],
    ["provider", (e) => e.execution_provider], ["batch size", (e) => String(e.batch_size)],
    ["scenario", (e) => e.scenario], ["level", (e) => e.level],
    ["p50", (e) => (e.latency_p50_ns === null ? "—" : formatDuration(e.latency_p50_ns))],
    ["p90", (e) => (e.latency_p90_ns === null ? "—" : formatDuration(e.latency_p90_ns))],
    ["p99", (e) => (e.latency_p99_ns === null ? "—" : formatDuration(e.latency_p99_ns))],
    ["throughput", (e) => formatNumber(e.throughput)],
    ["accuracy", (e) => formatNumber(e.accuracy_top1)],
    ["system", (e) => e.system_name || e.system],
    ["predictor", (e) => e.predictor || "—"],
  ];
  const NUMERIC_COLUMNS = new Set(["batch size", "p50", "p90", "p99", "throughput", "accuracy"]);

  // An evaluations row's own key: its span id is shared by the copies of an evaluation sent
  // again with other content (each a row, `conflict` 1), its span copy's content hash is not.
  function evaluationKey(e) {
    return `${e.span_id}-${e.content_hash}`;
  }

  function isDisputed(e) {
    return Number(e.conflict) === 1;
  }

  // API rows -> table rows: {id, spanId, disputed, traceId (null when none), cells: [strings]}.
  function evaluationRows(evaluations) {
    return evaluations.map((e) => ({
      id: evaluationKey(e),
      spanId: e.span_id,
      disputed: isDisputed(e),
      traceId: TRACE_ID.test(e.trace_id || "") ? e.trace_id : null,
      cells: EVALUATION_COLUMNS.map(([, cell]) => {
        const value = cell(e);
        return value === null || value === undefined ? "" : String(value);
      }),
    }));
  }

  function ratioOf(a, b) {
    return a > 0 && Number.isFinite(b) ? b / a : null;
  }

  // "trace" when both ids are trace ids, "evaluation" when both are evaluation ids, "mixed" for
  // one of each (GET /api/diff takes either), else null.
  function compareKind(a, b) {
    const kindOf = (id) => (TRACE_ID.test(id || "") ? "trace" : EVALUATION_ID.test(id || "") ? "evaluation" : null);
    const [ka, kb] = [kindOf(a), kindOf(b)];
    if (ka === null || kb === null) return null;
    return ka === kb ? ka : "mixed";
  }

  // GET /api/diff rows, sorted on one column; the delta column sorts by size (|b - a|), so that
  // descending puts the biggest changes first whichever way they went.
  const DIFF_SORT_KEYS = {
    key: (row) => row.key, a_ns: (row) => row.a_ns, b_ns: (row) => row.b_ns,
    delta_ns: (row) => Math.abs(row.delta_ns), ratio: (row) => (row.ratio === null ? -1 : row.ratio),
  };

  function sortDiffRows(rows, column, descending) {
    const value = DIFF_SORT_KEYS[column];
    const sign = descending ? -1 : 1;
    return [...rows].sort((x, y) => {
      const [vx, vy] = [value(x), value(y)];
      return sign * (vx < vy ? -1 : vx > vy ? 1 : 0) || (x.key < y.key ? -1 : x.key > y.key ? 1 : 0);
    });
  }

  const COMPARED_METRICS = [
    ["latency_mean_ns", "mean latency", "ns"], ["latency_p50_ns", "p50 latency", "ns"],
    ["latency_p90_ns", "p90 latency", "ns"], ["latency_p99_ns", "p99 latency", "ns"],
    ["throughput", "throughput", ""], ["accuracy_top1", "accuracy top-1", ""],
    ["accuracy_top5", "accuracy top-5", ""], ["server_qps", "server QPS", ""],
    ["divergence_max_abs_diff", "divergence max |diff|", ""],
    ["divergence_top1_agreement", "divergence top-1 agreement", ""],
  ];
  const DESCRIBED_FIELDS = [
    ["model", "model"], ["model_version", "version"], ["framework", "framework"],
    ["framework_version", "framework version"], ["execution_provider", "provider"], ["batch_size", "batch size"],
    ["scenario", "scenario"], ["level", "level"], ["system_name", "system"], ["predictor", "predictor"],
    ["run_id", "run"],
  ];

  // Two evaluation rows -> {config: [{label, a, b}], metrics: [{label, a, b, ratio}]} as text.
  function compareEvaluations(a, b) {
    const text = (value) => (value === null || value === undefined ? "—" : String(value));
    const config = DESCRIBED_FIELDS.map(([field, label]) => ({ label, a: text(a[field]), b: text(b[field]) }));
    const metrics = COMPARED_METRICS.map(([field, label, unit]) => {
      const va = a[field] === null || a[field] === undefined ? null : Number(a[field]);
      const vb = b[field] === null || b[field] === undefined ? null : Number(b[field]);
      const show = (v) => (v === null || Number.isNaN(v) ? "—" : unit === "ns" ? formatDuration(v) : formatNumber(v));
      return { label, a: show(va), b: show(vb), ratio: va === null || vb === null ? null : ratioOf(va, vb) };
    });
    return { config, metrics };
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

  // A service run with --auth answers 401 to data calls without a read token: the viewer asks
  // once, keeps the token for this tab (sessionStorage) and sends it as a bearer header, never
  // in a URL (URLs end up in logs and history).
  const TOKEN_KEY = "mlscope.token";
  let tokenDeclined = false;

  function withToken(options, token) {
    const headers = new Headers((options && options.headers) || {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    return { ...options, headers };
  }

  // The token to retry with after a 401 to a request that carried `sent`: one another request
  // already got (calls fail together), else the user's answer to one prompt; null to give up.
  function tokenAfterRefusal(sent) {
    const stored = sessionStorage.getItem(TOKEN_KEY);
    if (stored && stored !== sent) return stored;
    if (tokenDeclined) return null;
    const answer = (window.prompt(sent ? "That token was refused. mlscope read token:" : "mlscope read token:") || "").trim();
    if (!answer) {
      tokenDeclined = true;
      return null;
    }
    sessionStorage.setItem(TOKEN_KEY, answer);
    return answer;
  }

  async function fetchWithToken(url, options) {
    const sent = sessionStorage.getItem(TOKEN_KEY);
    const response = await fetch(url, withToken(options, sent));
    if (response.status !== 401) return response;
    const token = tokenAfterRefusal(sent);
    return token ? fetch(url, withToken(options, token)) : response;
  }

  // `parse` is parseJson unless the body has no integer beyond 2^53 (the compact trace form):
  // a reviver costs seconds on a 100k-span trace.
  async function fetchJson(url, options, parse = parseJson) {
    return responseJson(await fetchWithToken(url, options), parse);
  }

  async function responseJson(response, parse = parseJson) {
    const body = parse(await response.text());
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  // Saves `blob` as `filename` through a Blob URL, revoked once the download has started (an
  // unrevoked one keeps its blob in memory for the page's life).
  const REVOKE_AFTER_MS = 1000;

  function saveBlob(blob, filename) {
    const url = URL.createObjectURL(blob);
    el("a", { href: url, download: filename }).click();
    setTimeout(() => URL.revokeObjectURL(url), REVOKE_AFTER_MS);
  }

  // A download link that carries the token: a plain link's request could not.
  function downloadLink(url, filename, text) {
    const link = el("a", { href: url, download: filename }, text);
    link.addEventListener("click", async (event) => {
      event.preventDefault();
      const response = await fetchWithToken(url);
      if (!response.ok) {
        link.textContent = `${text} (${response.status})`;
        return;
      }
      saveBlob(await response.blob(), filename);
    });
    return link;
  }

  function showError(main, error) {
    main.replaceChildren(el("p", { class: "error" }, String(error.message || error)));
  }

  // --- pages ----------------------------------------------------------------------------------

  // The trace list's filters: the page's URL carries GET /api/traces's own parameters, so a
  // filtered list is a deep link and its API query is the same text.
  const TRACE_TEXT_FILTERS = ["service", "model", "framework", "level"];
  const TRACE_NUMBER_FILTERS = ["min_duration_ns", "since_ns", "until_ns"];

  // ?service=&...&since_ns= -> the same parameters, unknown and malformed ones dropped, in a fixed order.
  function traceListParams(search) {
    const params = new URLSearchParams(search);
    const kept = new URLSearchParams();
    for (const name of [...TRACE_TEXT_FILTERS, ...TRACE_NUMBER_FILTERS]) {
      const value = (params.get(name) || "").trim();
      if (value && (TRACE_TEXT_FILTERS.includes(name) || /^\d+$/.test(value))) kept.set(name, value);
    }
    return kept;
  }

  // <input type=datetime-local> (the browser's local time) <-> nanoseconds since the epoch.
  function localTimeToNs(text) {
    const ms = new Date(text).getTime();
    return text && Number.isFinite(ms) ? String(BigInt(ms) * 1000000n) : "";
  }

  function nsToLocalTime(ns) {
    if (!ns) return "";
    const date = new Date(Number(BigInt(ns) / 1000000n));
    return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  }

  function traceFilterForm(params, onSubmit) {
    const text = (name) => el("input", { type: "text", name, placeholder: name });
    const inputs = {
      service: text("service"), model: text("model"), framework: text("framework"),
      level: el("select", { name: "level" }, el("option", { value: "" }, "any level"),
        ...LEVELS.map((level) => el("option", { value: level }, level))),
      min_duration_ms: el("input", { type: "number", name: "min_duration_ms", min: "0", step: "any", placeholder: "ms" }),
      since: el("input", { type: "datetime-local", name: "since" }),
      until: el("input", { type: "datetime-local", name: "until" }),
    };
    for (const name of TRACE_TEXT_FILTERS) inputs[name].value = params.get(name) || "";
    const minNs = params.get("min_duration_ns");
    inputs.min_duration_ms.value = minNs ? String(Number(minNs) / 1e6) : "";
    inputs.since.value = nsToLocalTime(params.get("since_ns"));
    inputs.until.value = nsToLocalTime(params.get("until_ns"));
    const form = el("form", { class: "filters", id: "trace-filter" },
      ...TRACE_TEXT_FILTERS.map((name) => el("label", null, `${name} `, inputs[name])),
      el("label", null, "min duration (ms) ", inputs.min_duration_ms),
      el("label", null, "since ", inputs.since), el("label", null, "until ", inputs.until),
      el("button", { type: "submit" }, "Filter"), el("a", { href: "/" }, "clear"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const ms = Number(inputs.min_duration_ms.value);
      onSubmit(traceListParams(new URLSearchParams({
        ...Object.fromEntries(TRACE_TEXT_FILTERS.map((name) => [name, inputs[name].value])),
        min_duration_ns: inputs.min_duration_ms.value && ms >= 0 ? String(Math.round(ms * 1e6)) : "",
        since_ns: localTimeToNs(inputs.since.value), until_ns: localTimeToNs(inputs.until.value),
      })));
    });
    return form;
  }

  async function renderTraceList(main) {
    document.title = "mlscope: traces";
    const params = traceListParams(location.search);
    const query = params.toString();
    const { traces } = await fetchJson(`/api/traces?limit=200${query ? `&${query}` : ""}`);
    const form = traceFilterForm(params, (next) => {
      const text = next.toString();
      history.pushState(null, "", text ? `/?${text}` : "/");
      renderTraceList(main).catch((error) => showError(main, error));
    });
    const rows = traces.map((trace) => el("tr", null,
      el("td", null, el("a", { class: "trace-link", href: `/traces/${encodeURIComponent(trace.trace_id)}` },
        trace.root_name || "(no root span)")),
      el("td", null, trace.service),
      el("td", null, formatTime(trace.start_ns)),
      el("td", { class: "num" }, formatDuration(trace.duration_ns)),
      el("td", { class: "num" }, String(trace.span_count))));
    main.replaceChildren(el("h1", null, "Traces"), form, traces.length
      ? table(["root span", "service", "start", "duration", "spans"], rows, "traces")
      : el("p", { class: "muted" }, query ? "No traces match." : "No traces yet."));
  }

  // A button that selects span `i` of `model` in the timeline (parent and children links), by
  // id: a windowed read may have replaced the model since.
  function spanButton(timeline, model, i) {
    const button = el("button", { type: "button", class: "span-link" }, model.labels[i]);
    button.addEventListener("click", () => timeline.selectId(model.spanIds[i]));
    return button;
  }

  const LISTED_CHILDREN = 50;

  // A windowed read holds the spans of one window: a parent outside it is named by its id, and
  // the children listed are those in the window.
  function relatives(timeline, model, i) {
    const parent = model.parent[i];
    const children = window.mlscopeTimelineLib.childrenOf(model, i);
    const parentId = model.parentIds ? model.parentIds[i] : "";
    return [
      el("h3", null, "Parent"),
      parent >= 0 ? spanButton(timeline, model, parent)
        : el("p", { class: "muted" }, parentId ? `span ${parentId}, outside the window read` : "(root)"),
      el("h3", null, model.aggregateCount ? `Children in the window (${children.length})` : `Children (${children.length})`),
      children.length
        ? el("ul", { class: "children" }, ...children.slice(0, LISTED_CHILDREN).map((c) => el("li", null, spanButton(timeline, model, c))),
          children.length > LISTED_CHILDREN ? el("li", { class: "muted" }, `and ${children.length - LISTED_CHILDREN} more`) : null)
        : el("p", { class: "muted" }, "none")];
  }

  // The compact form the timeline is built from has no attributes, events or status: the
  // selected span's come from the JSON form read over the span's own interval, cut at its depth
  // (so its ancestors and overlapping siblings come along, never its subtree).
  function spanDetailUrl(base, levelsQuery, model, i) {
    const params = new URLSearchParams(levelsQuery);
    params.set("start_ns", String(model.origin + BigInt(model.starts[i])));
    params.set("end_ns", String(model.origin + BigInt(model.ends[i])));
    params.set("max_depth", String(model.depth[i]));
    return `${base}?${params}`;
  }

  async function fetchSpanDetail(base, levelsQuery, model, i) {
    const { spans } = await fetchJson(spanDetailUrl(base, levelsQuery, model, i));
    return spans.find((span) => span.span_id === model.spanIds[i]) || null;
  }

  function detailSections(span, origin) {
    if (span === null) return [el("p", { class: "muted" }, "Attributes and events could not be read for this span.")];
    return [
      el("h3", null, "Attributes"), keyValueTable(span.attributes),
      el("h3", null, "Events"),
      span.events.length
        ? table(["at", "name", "attributes"], span.events.map((e) => el("tr", null,
          el("td", null, `+${formatDuration(toBig(e.time_ns) - origin)}`), el("td", null, e.name),
          el("td", null, JSON.stringify(e.attributes)))))
        : el("p", { class: "muted" }, "none"),
      el("h3", null, "Resource"), keyValueTable(span.resource)];
  }

  // Span `i` from the timeline's columns and `span`, its JSON form (null when it could not be read).
  function renderDetail(panel, timeline, model, i, span) {
    const text = (index) => model.strings[index];
    const fields = [
      ["name", text(model.nameOf[i])], ["level", span ? span.level : text(model.levelOf[i])],
      ["duration", formatDuration(model.ends[i] - model.starts[i])], ["self time", formatDuration(model.selfNs[i])],
      ["starts at", `+${formatDuration(model.starts[i])}`], ["service", text(model.serviceOf[i])],
      ...(span ? [["kind", span.kind], ["status", [span.status.code, span.status.message].filter(Boolean).join(": ")]] : []),
      ["span id", model.spanIds[i]],
    ];
    panel.replaceChildren(
      el("h2", null, model.labels[i]),
      table(["field", "value"], fields.map(([k, v]) => el("tr", null, el("td", null, k), el("td", null, String(v))))),
      ...relatives(timeline, model, i), ...detailSections(span, model.origin));
  }

  // An aggregate of a windowed read: the spans narrower than a pixel it stands for.
  function renderAggregate(panel, model, i) {
    const fields = [
      ["spans", String(model.aggregateCount[i])], ["summed time", formatDuration(model.selfNs[i])],
      ["mostly", model.strings[model.nameOf[i]]], ["from", `+${formatDuration(model.starts[i])}`],
      ["to", `+${formatDuration(model.ends[i])}`], ["track", model.strings[model.serviceOf[i]]]];
    panel.replaceChildren(
      el("h2", null, `${model.aggregateCount[i]} spans merged`),
      table(["field", "value"], fields.map(([k, v]) => el("tr", null, el("td", null, k), el("td", null, v)))),
      el("p", { class: "muted" }, "Zoom in to see them one by one."));
  }

  // Shows the selected span once its details arrive; a later selection wins over a slower answer.
  function detailPanel(base, levelsQuery) {
    const panel = el("aside", { class: "detail", "data-testid": "details" });
    let latest = 0;
    const show = async (timeline, i) => {
      latest += 1;
      const request = latest;
      if (i < 0) {
        panel.replaceChildren(el("p", { class: "muted" }, "Click a span for its details."));
        return;
      }
      // `i` indexes the model of the moment: a windowed read may replace it while the span's
      // own answer is on its way.
      const { model } = timeline;
      if (model.aggregateCount && model.aggregateCount[i] > 0) {
        renderAggregate(panel, model, i);
        return;
      }
      panel.replaceChildren(el("p", { class: "muted" }, `${model.labels[i]}: loading…`));
      const span = await fetchSpanDetail(base, levelsQuery, model, i).catch(() => null);
      if (request === latest) renderDetail(panel, timeline, model, i, span);
    };
    return { panel, show };
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

  // The trace page's URL keeps the visible window (?start=&end=, nanoseconds after the trace's
  // start) and the selected span (?span=), so a pasted link shows the same thing.
  function parseWindow(search) {
    const params = new URLSearchParams(search);
    const start = Number(params.get("start"));
    const end = Number(params.get("end"));
    return {
      initialView: params.has("start") && params.has("end") && end > start ? { t0: start, t1: end } : null,
      selectedId: params.get("span"),
    };
  }

  function replaceUrlParams(values) {
    const url = new URL(location.href);
    for (const [name, value] of Object.entries(values)) {
      if (value === null) url.searchParams.delete(name);
      else url.searchParams.set(name, String(value));
    }
    history.replaceState(null, "", url);
  }

  // Enter selects the next match, Shift+Enter the previous; typing highlights the matches.
  // searchFor(text) does both from elsewhere (the analysis tables' rows). With `searchTrace`
  // (windowed mode: the page holds one window) the matches come from the whole trace
  // (GET /api/traces/{id}/search) and next/previous move the window to each one.
  function searchBox(timeline, searchTrace) {
    const input = el("input", { type: "search", "data-testid": "search", placeholder: "search spans (Enter: next)" });
    const count = el("span", { class: "muted search-count", "data-testid": "search-count" });
    let found = null; // searchTrace's answer for found.q, and the match at found.at
    const traceMatches = async (text) => {
      if (!found || found.q !== text) found = { ...(await searchTrace(text)), q: text, at: -1 };
      return found;
    };
    let countTimer = 0;
    const highlight = () => {
      const text = input.value;
      const local = timeline.setSearch(text);
      count.textContent = text.trim() ? `${local} matches` : "";
      if (!searchTrace || !text.trim()) return;
      clearTimeout(countTimer);
      countTimer = setTimeout(() => traceMatches(text.trim()).then((answer) => {
        if (input.value.trim() !== answer.q) return;
        const listed = answer.matches.length < answer.total ? ` (the first ${answer.matches.length} reachable)` : "";
        count.textContent = `${answer.total} matches in the trace${listed}`;
      }).catch((error) => { count.textContent = `search failed: ${error.message}`; }), SEARCH_DEBOUNCE_MS);
    };
    const step = async (direction) => {
      timeline.setSearch(input.value);
      if (!searchTrace) {
        timeline.selectMatch(direction);
        return;
      }
      const text = input.value.trim();
      if (!text) return;
      const answer = await traceMatches(text);
      const n = answer.matches.length;
      if (!n) return;
      answer.at = answer.at < 0 && direction < 0 ? n - 1 : (((answer.at + direction) % n) + n) % n;
      const match = answer.matches[answer.at];
      count.textContent = `${answer.at + 1} of ${answer.total} matches in the trace`;
      timeline.goToSpan(match.span_id, match.start, match.end);
    };
    input.addEventListener("input", highlight);
    input.addEventListener("keydown", (event) => {
      if (event.key !== "Enter") return;
      event.preventDefault();
      step(event.shiftKey ? -1 : 1).catch((error) => { count.textContent = `search failed: ${error.message}`; });
    });
    const searchFor = (text) => {
      input.value = text;
      highlight();
      step(1).catch((error) => { count.textContent = `search failed: ${error.message}`; });
    };
    return { element: el("label", { class: "search" }, input, count), searchFor };
  }

  const SEARCH_DEBOUNCE_MS = 250;
  const SEARCH_LIMIT = 1000; // matches listed for next/previous in windowed mode (the API's most)

  // GET {base}/search as the matches' ids and times after `origin` (BigInt ns).
  function traceSearch(base, origin) {
    return async (text) => {
      const answer = await fetchJson(`${base}/search?q=${encodeURIComponent(text)}&limit=${SEARCH_LIMIT}`);
      return {
        total: Number(answer.total),
        matches: answer.matches.map((m) => ({
          span_id: m.span_id, start: Number(toBig(m.start_ns) - origin), end: Number(toBig(m.end_ns) - origin) })),
      };
    };
  }

  // A table cell whose button acts on the timeline (selects a span, or searches for a name).
  function actionCell(text, action) {
    const button = el("button", { type: "button", class: "span-link" }, text);
    button.addEventListener("click", action);
    return el("td", null, button);
  }

  function analysisTable(title, headers, rows) {
    return el("section", null, el("h3", null, title),
      rows.length ? table(headers, rows, "analysis-table") : el("p", { class: "muted" }, "none"));
  }

  // GET /api/traces/{id}/analysis as tables beside a critical-path toggle: a top-self row selects
  // its span, an op type or a layer row searches for it (selecting its first call).
  function analysisSections(analysis, timeline, searchFor) {
    const toggle = el("input", { type: "checkbox", "data-testid": "critical-path" });
    const pathIds = analysis.critical_path.map((step) => step.span_id);
    toggle.addEventListener("change", () => timeline.setOutline(toggle.checked ? pathIds : []));
    const pct = (share) => (share === null ? "—" : `${(100 * share).toFixed(1)} %`);
    const tr = (...cells) => el("tr", null, ...cells.map((c) => (typeof c === "string" ? el("td", null, c) : c)));
    return [
      el("label", { class: "critical-toggle" }, toggle,
        ` outline the critical path (${pathIds.length} spans, root to leaf)`),
      el("div", { class: "analysis-tables" },
        analysisTable("Top self time", ["span", "level", "self", "duration"], analysis.top_self.map((row) =>
          tr(actionCell(row.name, () => timeline.selectId(row.span_id)), row.level,
            formatDuration(row.self_ns), formatDuration(row.duration_ns)))),
        analysisTable("Op types", ["op", "calls", "self", "mean"], analysis.op_types.map((row) =>
          tr(actionCell(row.name, () => searchFor(row.name)), String(row.calls),
            formatDuration(row.self_ns), formatDuration(row.mean_ns)))),
        analysisTable("Layers", ["layer", "calls", "total", "of model"], analysis.layers.map((row) =>
          tr(actionCell(row.type ? `${row.path} (${row.type})` : row.path, () => searchFor(row.path)),
            String(row.calls), formatDuration(row.total_ns), pct(row.share_of_model))))),
    ];
  }

  // The analysis arrives after the timeline is drawn (it reads the whole trace server-side).
  function analysisPanel(base, timeline, searchFor) {
    const panel = el("details", { class: "analysis", "data-testid": "analysis", open: "" },
      el("summary", null, "Analysis"), el("p", { class: "muted" }, "loading…"));
    fetchJson(`${base}/analysis`)
      .then((analysis) => panel.replaceChildren(panel.firstChild, ...analysisSections(analysis, timeline, searchFor)))
      .catch((error) => panel.replaceChildren(panel.firstChild, el("p", { class: "muted" }, `no analysis: ${error.message}`)));
    return panel;
  }

  // GET /api/traces/{id}/counters' series as the timeline's counter tracks: sample times moved
  // from the trace's start to the drawn spans' origin (a level filter can move the origin).
  function counterTracks(counters, origin) {
    const shift = Number(toBig(counters.start_ns) - origin);
    return counters.series.map((series) => {
      const labels = Object.entries(series.attributes).map(([key, value]) => `${key}=${value}`);
      return {
        title: [series.name, ...labels, series.unit && series.unit !== "1" ? `(${series.unit})` : ""].join(" ").trim(),
        times: Float64Array.from(series.offset_ns, (offset) => Number(offset) + shift),
        values: Float64Array.from(series.value, Number),
      };
    });
  }

  // Past this many spans the trace page reads windows (GET /api/traces/{id}/window) instead of
  // the whole trace; ?window_over=N sets it (tests use a small trace).
  const WINDOWED_OVER = 200000;

  function windowedOver(search) {
    const params = new URLSearchParams(search);
    const value = Number(params.get("window_over"));
    return params.has("window_over") && Number.isInteger(value) && value >= 0 ? value : WINDOWED_OVER;
  }

  // The first window (the whole trace) and a reader of later ones for the timeline; times in ns
  // after the trace's start. `coverage` follows what the latest window was read from: the
  // trace's rows then (span_count) and now (spans_now), fewer while a growing trace is filled
  // again; `onCoverage(fn)` is told of each change.
  async function windowedTrace(base) {
    const first = await fetchJson(`${base}/window`);
    const origin = toBig(first.start_ns);
    const coverageOf = (answer) => ({ span_count: Number(answer.span_count), spans_now: Number(answer.spans_now) });
    let coverage = coverageOf(first);
    let listener = () => {};
    const toColumns = (answer) => window.mlscopeTimelineLib.windowColumns(answer, origin, DEFAULT_LEVEL);
    const fetchWindow = async (t0, t1, pixels) => {
      const answer = await fetchJson(
        `${base}/window?start_ns=${origin + BigInt(Math.round(t0))}&end_ns=${origin + BigInt(Math.round(t1))}&pixels=${pixels}`);
      const now = coverageOf(answer);
      if (now.span_count !== coverage.span_count || now.spans_now !== coverage.spans_now) {
        coverage = now;
        listener(coverage);
      }
      return toColumns(answer);
    };
    return { trace: toColumns(first), fetchWindow, coverage: () => coverage, onCoverage: (fn) => { listener = fn; } };
  }

  // The trace page's span count in windowed mode: the counters' count, or while the trace grows
  // faster than its windows are prepared, how many of its spans the windows show.
  function windowedCountText(counters, coverage) {
    return coverage && coverage.spans_now > coverage.span_count
      ? `showing ${coverage.span_count} of ${coverage.spans_now} spans (the trace is growing)`
      : `${counters.span_count} spans (read a window at a time)`;
  }

  // The timelines on the page: a page drawing new ones ends the old ones' listeners.
  let liveTimelines = [];

  function replaceTimelines(timelines) {
    for (const timeline of liveTimelines) timeline.destroy();
    liveTimelines = timelines;
  }

  // What the trace page draws when every level is switched off (the compact form, empty).
  const EMPTY_TRACE = Object.freeze({
    origin_ns: "0", span_id: [], parent: [], name: [], service: [], level: [], start_ns: [], duration_ns: [],
    self_ns: [], depth: [], strings: [], warnings: [], attributes: {},
  });

  // What a timeline draws of trace `base` (/api/traces/{id}): its compact form at `levelsQuery`
  // (null: no level shown), or past `windowPast` spans its first window and a reader of later
  // ones (fetchWindow, else null); `counters` is GET {base}/counters (span count, sampled series).
  // The compact form is asked for beside the counters with max_spans=windowPast: past it the
  // server answers 413 from the trace index's count (the counters' span_count) before reading a
  // span, so a big trace costs no compact form built for nothing, and its first window is asked
  // for then, not after the counters (which take longer).
  // `say(text)` tells the user what is being read while they wait.
  async function loadTrace(base, levelsQuery, windowPast, say = () => {}) {
    const compactRead = levelsQuery === null ? null
      : fetchWithToken(`${base}?format=compact&max_spans=${windowPast}${levelsQuery ? `&${levelsQuery}` : ""}`);
    const windowRead = compactRead && compactRead.then((response) => response.status === 413 ? windowedTrace(base) : null);
    if (windowRead) windowRead.catch(() => {}); // its failure is thrown where it is awaited
    const counters = await fetchJson(`${base}/counters`);
    const big = Number(counters.span_count) > windowPast;
    say(big
      ? `Reading ${counters.span_count} spans a window at a time. The first read of a trace that has just ` +
        "finished prepares its windows: seconds per million spans; later reads are quick."
      : `Reading ${counters.span_count} spans…`);
    const compact = compactRead && await compactRead;
    // The trace may have grown past the cap between the two answers: either one says windows.
    const windowed = compact && compact.status === 413 ? await windowRead : big ? await windowedTrace(base) : null;
    const trace = windowed ? windowed.trace : compact ? await responseJson(compact, JSON.parse) : EMPTY_TRACE;
    return { counters, trace, fetchWindow: windowed ? windowed.fetchWindow : null, windowed };
  }

  async function renderTrace(main, traceId) {
    document.title = `mlscope: trace ${traceId}`;
    const shown = parseLevels(location.search);
    const param = levelsParam(shown);
    const base = `/api/traces/${encodeURIComponent(traceId)}`;
    const levelsQuery = param === null ? "" : `levels=${encodeURIComponent(param)}`;
    // On a page without a timeline yet (not on a level toggle, which keeps the old one until the new one is read).
    const say = (text) => {
      if (!main.querySelector("[data-testid=timeline]")) main.replaceChildren(el("p", { class: "muted", "data-testid": "loading" }, text));
    };
    const { counters, trace, fetchWindow, windowed: windowedRead } = await loadTrace(
      base, shown.size ? levelsQuery : null, windowedOver(location.search), say);
    const windowed = fetchWindow !== null;
    const detail = detailPanel(base, levelsQuery);
    const timeline = window.mlscopeTimelineLib.createTimeline({
      columns: trace, levels: LEVELS, defaultLevel: DEFAULT_LEVEL, ...parseWindow(location.search), fetchWindow,
      onSelect: (i) => detail.show(timeline, i),
      onViewChange: (view) => replaceUrlParams({ start: view.startNs, end: view.endNs, span: view.selected }),
    });
    replaceTimelines([timeline]);
    if (timeline.model.count) timeline.setCounters(counterTracks(counters, timeline.model.origin));
    window.mlscopeTimeline = timeline;
    const count = timeline.model.count;
    const onLevels = (levels) => {
      replaceUrlParams({ levels: levelsParam(levels) });
      renderTrace(main, traceId).catch((error) => showError(main, error));
    };
    const search = searchBox(timeline, windowed ? traceSearch(base, timeline.model.origin) : null);
    const spanCount = el("span", { "data-testid": "span-count" },
      windowed ? windowedCountText(counters, windowedRead.coverage()) : `${count} spans`);
    if (windowed) windowedRead.onCoverage((coverage) => { spanCount.textContent = windowedCountText(counters, coverage); });
    const parts = [
      el("h1", null, count ? trace.strings[trace.name[0]] : "(no spans at these levels)"),
      el("div", { class: "meta" },
        el("span", null, `trace ${traceId}`),
        count ? el("span", null, formatTime(timeline.model.origin)) : null,
        el("span", { class: "total" }, formatDuration(timeline.model.totalNs)),
        spanCount,
        downloadLink(`${base}/export?format=perfetto`, `trace-${traceId}.perfetto.json`, "Perfetto JSON"),
        downloadLink(`${base}/export?format=perfetto-proto`, `trace-${traceId}.pftrace`, "Perfetto trace (protobuf)"),
        downloadLink(`${base}/export?format=jaeger`, `trace-${traceId}.jaeger.json`, "Jaeger JSON")),
      el("div", { class: "toolbar" }, levelFilter(shown, onLevels), search.element,
        el("span", { class: "muted keys" }, "W/S zoom · A/D pan · wheel zooms · drag pans · shift+drag zooms to a range")),
      trace.warnings.length
        ? el("details", { class: "warnings" }, el("summary", null, `${trace.warnings.length} warnings`),
          el("ul", null, ...trace.warnings.map((w) => el("li", null, w))))
        : null,
      el("div", { class: "trace-view" }, timeline.element, detail.panel),
      count ? analysisPanel(base, timeline, search.searchFor) : null];
    main.replaceChildren(...parts.filter((part) => part !== null));
    const selected = parseWindow(location.search).selectedId;
    detail.show(timeline, selected && timeline.model.byId.has(selected) ? timeline.model.byId.get(selected) : -1);
  }

  // --- SQL page -------------------------------------------------------------------------------

  const SQL_TABLES = ["spans", "metrics", "evaluations"];
  const NUMERIC_TYPE = /^(Nullable\()?(U?Int|Float|Decimal)/;
  const CHART_ROWS = 50;

  function cellText(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "string" ? value : JSON.stringify(value, (k, v) => (typeof v === "bigint" ? v.toString() : v));
  }

  // RFC 4180: every cell quoted, quotes doubled.
  function toCsv(columns, rows) {
    const line = (cells) => cells.map((cell) => `"${cellText(cell).replace(/"/g, '""')}"`).join(",");
    return [line(columns.map((c) => c.name)), ...rows.map(line)].join("\r\n") + "\r\n";
  }

  // The first numeric column against the first other column (or the row number), as bars.
  function resultChart(columns, rows) {
    const value = columns.findIndex((c) => NUMERIC_TYPE.test(c.type));
    if (value < 0 || !rows.length) return null;
    const label = columns.findIndex((c, i) => i !== value && !NUMERIC_TYPE.test(c.type));
    const shown = rows.slice(0, CHART_ROWS);
    const groups = shown.map((row, i) => {
      const name = label < 0 ? String(i + 1) : cellText(row[label]);
      return { name, bars: [{ series: 0, value: Number(row[value]), title: `${name}: ${cellText(row[value])}` }] };
    });
    return el("figure", { class: "figure", id: "sql-chart" },
      el("figcaption", null, `${columns[value].name}${rows.length > CHART_ROWS ? ` (first ${CHART_ROWS} rows)` : ""}`),
      window.mlscopeCharts.barChart(groups, [columns[value].name], {
        title: columns[value].name, xLabel: label < 0 ? "row" : columns[label].name, yLabel: columns[value].name,
        yFormat: (v) => formatNumber(v, 3) }));
  }

  // The CSV is made when asked for, not with every result.
  function csvLink(columns, rows) {
    const button = el("button", { type: "button", id: "sql-csv", class: "span-link" }, "Download CSV");
    button.addEventListener("click", () => saveBlob(new Blob([toCsv(columns, rows)], { type: "text/csv" }), "mlscope-query.csv"));
    return button;
  }

  async function runSql(query) {
    return fetchJson("/api/sql", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ query }),
    });
  }

  // The tables' columns beside the editor, from one row of each joined onto a constant so that an
  // empty table answers too (the embedded store sends no columns with no rows; the system tables
  // are closed to /api/sql, and DESCRIBE is refused by the embedded store).
  // One at a time: the API runs few queries at once. A click on a column name types it in.
  function columnButton(editor, name) {
    const button = el("button", { type: "button", class: "span-link" }, name);
    button.addEventListener("click", () => {
      editor.setRangeText(name, editor.selectionStart, editor.selectionEnd, "end");
      editor.focus();
    });
    return button;
  }

  async function schemaPanel(editor) {
    const sections = [];
    for (const name of SQL_TABLES) {
      const result = await runSql(`SELECT t.* FROM (SELECT 1) AS one LEFT JOIN ${name} AS t ON 1 = 1 LIMIT 1`).catch((error) => error);
      sections.push(result instanceof Error
        ? el("p", { class: "muted" }, `${name}: ${result.message}`)
        : el("details", { open: name === "spans" ? "" : null }, el("summary", null, name),
          el("ul", null, ...result.columns.map((column) =>
            el("li", null, columnButton(editor, column.name), " ", el("span", { class: "muted" }, column.type))))));
    }
    return el("aside", { class: "schema", id: "sql-schema" }, el("h3", null, "Tables"), ...sections);
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
        const result = await runSql(query.value);
        const rows = result.rows.map((row) => el("tr", null, ...row.map((value) => el("td", null, cellText(value)))));
        output.replaceChildren(
          el("p", { class: "muted" }, `${result.rows.length} rows${result.truncated ? " (truncated at the limit)" : ""} `,
            csvLink(result.columns, result.rows)),
          resultChart(result.columns, result.rows),
          table(result.columns.map((c) => `${c.name} ${c.type}`), rows, "sql-result"));
      } catch (error) {
        output.replaceChildren(el("p", { class: "error" }, String(error.message || error)));
      } finally {
        run.disabled = false;
      }
    };
    run.addEventListener("click", execute);
    query.addEventListener("keydown", (event) => { if (event.key === "Enter" && event.ctrlKey) execute(); });
    const schema = el("aside", { class: "schema" }, el("p", { class: "muted" }, "Loading tables…"));
    main.replaceChildren(el("h1", null, "SQL"),
      el("div", { class: "sql-layout" }, el("div", { class: "sql-editor" }, query, el("div", { class: "sql-bar" }, run, note)), schema),
      output);
    schemaPanel(query).then((panel) => schema.replaceWith(panel));
  }

  // Predictors (mlscope predictor) and their latest jobs (mlscope evaluate --remote), newest first.
  // Times come as BigInt nanoseconds (parseJson keeps them exact): Number() is precise enough here.
  const PREDICTOR_COLUMNS = ["predictor", "system", "runs", "labels", "state", "last heard"];
  const JOB_COLUMNS = ["job", "run", "predictor", "state", "results", "message", "queued"];
  const RECENT_JOBS = 20;
  const RECENT_PREDICTORS = 50; // the API lists the most recently heard first

  function predictorRows(predictors, nowMs) {
    return predictors.slice(0, RECENT_PREDICTORS).map((p) => [
      p.name, `${p.system_name} (${p.system})`, p.execution_providers.join(", "),
      Object.entries(p.labels).map(([key, value]) => `${key}=${value}`).join(", ") || "—",
      p.alive ? "alive" : "gone", `${Math.max(0, Math.round(nowMs / 1000 - Number(p.seen_ns) / 1e9))} s ago`]);
  }

  function jobRows(jobs, predictors) {
    const names = new Map(predictors.map((p) => [p.predictor_id, p.name]));
    return jobs.map((job) => [
      job.job_id.slice(0, 8), job.run_id.slice(0, 8), names.get(job.predictor_id) || job.predictor_id.slice(0, 8),
      job.state, String(job.results), job.message || "—", new Date(Number(job.created_ns) / 1e6).toISOString()]);
  }

  function dispatchSections(predictors, jobs) {
    const rows = (cells) => cells.map((row) => el("tr", null, ...row.map((cell) => el("td", null, cell))));
    return [
      el("h2", null, "Predictors"),
      predictors.length
        ? table(PREDICTOR_COLUMNS, rows(predictorRows(predictors, Date.now())), "predictors")
        : el("p", { class: "muted" }, "No predictor has registered (mlscope predictor --server URL)."),
      el("h2", null, "Jobs"),
      jobs.length
        ? table(JOB_COLUMNS, rows(jobRows(jobs, predictors)), "jobs")
        : el("p", { class: "muted" }, "No job queued yet (mlscope evaluate --remote)."),
    ];
  }

  // --- evaluations charts: pure transforms -----------------------------------------------------

  // The configuration fields a chart series or group is told apart by (batch size is the x axis).
  const CONFIG_FIELDS = [["model", "model"], ["framework", "framework"], ["execution_provider", "provider"],
    ["system_name", "system"], ["scenario", "scenario"], ["level", "level"]];
  const CHART_METRICS = COMPARED_METRICS.filter(([field]) => field !== "latency_mean_ns");

  function fieldText(e, field) {
    return field === "system_name" ? String(e.system_name || e.system) : String(e[field] ?? "");
  }

  // The fields whose value differs between rows: a label made of them tells rows apart.
  function varyingFields(evaluations, fields) {
    return fields.filter(([field]) => new Set(evaluations.map((e) => fieldText(e, field))).size > 1);
  }

  function configLabel(e, fields) {
    return fields.map(([field]) => fieldText(e, field)).join(" · ") || fieldText(e, "framework");
  }

  function pointOf(e, value, title) {
    const traceId = TRACE_ID.test(e.trace_id || "") ? e.trace_id : null;
    return { key: evaluationKey(e), title, href: traceId ? `/traces/${encodeURIComponent(traceId)}` : null, value };
  }

  function metricText(value, unit) {
    return unit === "ns" ? formatDuration(value) : formatNumber(value);
  }

  // Which copy of a disputed evaluation is right cannot be told: the charts draw only undisputed
  // rows and say how many they left out (null when none).
  function leftOutOfCharts(evaluations) {
    const disputed = evaluations.filter(isDisputed);
    if (!disputed.length) return null;
    const ids = new Set(disputed.map((e) => `${e.trace_id}/${e.span_id}`));
    return `${disputed.length} disputed ${disputed.length === 1 ? "copy" : "copies"} of ${ids.size} `
      + `${ids.size === 1 ? "evaluation" : "evaluations"} (sent again with other content) left out of this chart: `
      + "see the rows marked disputed below.";
  }

  // Fig. 3: one series per configuration (all but batch size), `field` against batch size;
  // disputed rows are left out.
  function batchSeries(evaluations, [field, label, unit]) {
    const kept = evaluations.filter((e) => !isDisputed(e));
    const fields = varyingFields(kept, CONFIG_FIELDS);
    const series = new Map();
    for (const e of kept) {
      if (e[field] === null || e[field] === undefined) continue;
      const name = configLabel(e, fields);
      if (!series.has(name)) series.set(name, { name, points: [] });
      const value = Number(e[field]);
      series.get(name).points.push({ ...pointOf(e, value, `${name}\nbatch ${e.batch_size}: ${label} ${metricText(value, unit)}`),
        x: Number(e.batch_size), y: value });
    }
    return [...series.values()];
  }

  // The values of `dimension` the normalised chart draws (its baselines): those of undisputed rows.
  function dimensionNames(evaluations, dimension) {
    return [...new Set(evaluations.filter((e) => !isDisputed(e)).map((e) => fieldText(e, dimension)))].sort();
  }

  // Fig. 4: each configuration's p50 latency on every value of `dimension` (system or framework)
  // divided by its latency on `baseline`; configurations without a baseline row are left out,
  // and so are disputed rows (a disputed baseline would make every bar of its group a guess).
  function normalisedGroups(evaluations, dimension, baseline) {
    const kept = evaluations.filter((e) => !isDisputed(e));
    const others = [...CONFIG_FIELDS.filter(([field]) => field !== dimension), ["batch_size", "batch"]];
    const names = dimensionNames(kept, dimension);
    const shown = varyingFields(kept, others);
    const groups = new Map();
    for (const e of kept) {
      if (!(Number(e.latency_p50_ns) > 0)) continue;
      const key = others.map(([field]) => fieldText(e, field)).join("\u0000");
      if (!groups.has(key)) groups.set(key, { name: configLabel(e, shown), rows: [] });
      groups.get(key).rows.push(e);
    }
    const result = [];
    for (const group of groups.values()) {
      const base = group.rows.find((e) => fieldText(e, dimension) === baseline);
      if (!base) continue;
      result.push({ name: group.name, bars: group.rows.map((e) => {
        const ratio = Number(e.latency_p50_ns) / Number(base.latency_p50_ns);
        const on = fieldText(e, dimension);
        return { ...pointOf(e, ratio, `${group.name}\n${on}: ${formatDuration(e.latency_p50_ns)} (${formatRatio(ratio)} ${baseline})`),
          series: names.indexOf(on) };
      }) });
    }
    return { names, groups: result };
  }

  // --- evaluations page -----------------------------------------------------------------------

  function filterForm(filter, evaluations, onSubmit) {
    const inputs = {};
    const lists = [];
    for (const name of EVALUATION_FILTERS) {
      const numeric = name === "batch_size";
      const input = el("input", { type: numeric ? "number" : "text", name, placeholder: name.replace("_", " "),
        list: numeric ? null : `values-${name}`, min: numeric ? "0" : null });
      input.value = filter[name] || "";
      inputs[name] = input;
      // Suggestions from the rows shown; values go in as properties, never markup.
      const values = [...new Set(evaluations.map((e) => String(e[name] ?? "")))].filter(Boolean).sort();
      lists.push(el("datalist", { id: `values-${name}` }, ...values.map((value) => {
        const option = el("option");
        option.value = value;
        return option;
      })));
    }
    const form = el("form", { class: "filters", id: "evaluation-filter" },
      ...Object.entries(inputs).map(([name, input]) => el("label", null, `${name.replace("_", " ")} `, input)),
      ...lists, el("button", { type: "submit" }, "Filter"), el("a", { href: "/evaluations" }, "clear"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      onSubmit(Object.fromEntries(Object.entries(inputs).map(([name, input]) => [name, input.value])));
    });
    return form;
  }

  // What /compare is given for an evaluations row: its span id (what GET /api/diff takes), and
  // for a disputed copy its content hash (?a_copy=, ?b_copy=), so the page shows that copy's figures.
  function compareChoice(e) {
    return { id: e.span_id, copy: isDisputed(e) ? e.content_hash : null };
  }

  // Two choices ({id: a trace or evaluation id, copy}) -> /compare's URL.
  function compareHref(a, b) {
    const params = new URLSearchParams({ a: a.id, b: b.id });
    if (a.copy) params.set("a_copy", a.copy);
    if (b.copy) params.set("b_copy", b.copy);
    return `/compare?${params}`;
  }

  // Up to two evaluations (rows, by evaluationKey) picked for /compare, from the table's boxes or
  // by shift-clicking chart points; every view of the pick is redrawn from `picked`.
  function comparePicker(main, evaluations) {
    const byKey = new Map(evaluations.map((e) => [evaluationKey(e), e]));
    const picked = [];
    const link = el("a", { id: "compare-selected", class: "disabled" }, "Compare 2 selected");
    const sync = () => {
      for (const box of main.querySelectorAll("table.evaluations input[type=checkbox]")) box.checked = picked.includes(box.value);
      for (const node of main.querySelectorAll(".chart .mark")) node.classList.toggle("picked", picked.includes(node.dataset.key));
      const ready = picked.length === 2;
      link.classList.toggle("disabled", !ready);
      if (ready) link.setAttribute("href", compareHref(compareChoice(byKey.get(picked[0])), compareChoice(byKey.get(picked[1]))));
      else link.removeAttribute("href");
    };
    const toggle = (id) => {
      if (picked.includes(id)) picked.splice(picked.indexOf(id), 1);
      else picked.push(id);
      if (picked.length > 2) picked.shift();
      sync();
    };
    return { link, toggle, has: (id) => picked.includes(id) };
  }

  function select(name, options, value, onChange) {
    const node = el("select", { name }, ...options.map(([v, label]) => el("option", { value: v }, label)));
    node.value = value;
    node.addEventListener("change", () => onChange(node.value));
    return node;
  }

  // The charts' choices ride in the page's URL beside the filter (?metric=&dimension=&baseline=),
  // so a reload or a pasted link draws the same charts; unknown values fall back to the defaults.
  const CHART_PARAMS = ["metric", "dimension", "baseline"];
  const DIMENSIONS = [["system_name", "across systems"], ["framework", "across frameworks"]];

  function parseChartChoices(search) {
    const params = new URLSearchParams(search);
    const metric = params.get("metric");
    const dimension = params.get("dimension");
    return {
      metric: CHART_METRICS.some(([field]) => field === metric) ? metric : CHART_METRICS[0][0],
      dimension: DIMENSIONS.some(([field]) => field === dimension) ? dimension : null,
      baseline: params.get("baseline"),
    };
  }

  // The filter's query with the charts' choices of `search` kept.
  function evaluationsUrl(filter, search) {
    const params = new URLSearchParams(evaluationFilterQuery(filter));
    const current = new URLSearchParams(search);
    for (const name of CHART_PARAMS) if (current.get(name)) params.set(name, current.get(name));
    const text = params.toString();
    return `/evaluations${text ? `?${text}` : ""}`;
  }

  // Fig. 3: a metric (p50 latency first) against batch size, one line per configuration.
  function batchFigure(evaluations, picker, choices) {
    const holder = el("div");
    const draw = (field) => {
      const metric = CHART_METRICS.find(([f]) => f === field);
      holder.replaceChildren(window.mlscopeCharts.lineChart(batchSeries(evaluations, metric), {
        title: `${metric[1]} against batch size`, xLabel: "batch size", yLabel: metric[1],
        yFormat: (v) => metricText(v, metric[2]), onPick: picker.toggle, picked: picker }));
    };
    const chooser = select("metric", CHART_METRICS.map(([field, label]) => [field, label]), choices.metric, (field) => {
      replaceUrlParams({ metric: field });
      draw(field);
    });
    draw(chooser.value);
    return el("figure", { class: "figure", id: "figure-batch" },
      el("figcaption", null, "Latency against batch size (Fig. 3) ", chooser), holder, leftOutNote(evaluations));
  }

  // Fig. 4: p50 latency across systems (or frameworks) divided by a baseline's.
  function normalisedFigure(evaluations, picker, choices) {
    const holder = el("div");
    const state = {
      dimension: choices.dimension || (new Set(evaluations.map((e) => fieldText(e, "system_name"))).size > 1 ? "system_name" : "framework"),
      baseline: choices.baseline,
    };
    const baselineSelect = el("select", { name: "baseline" });
    const draw = () => {
      const names = dimensionNames(evaluations, state.dimension);
      if (!names.includes(state.baseline)) state.baseline = names[0];
      baselineSelect.replaceChildren(...names.map((name) => el("option", { value: name }, name)));
      baselineSelect.value = state.baseline;
      const { groups } = normalisedGroups(evaluations, state.dimension, state.baseline);
      holder.replaceChildren(window.mlscopeCharts.barChart(groups, names, {
        title: "p50 latency normalised to the baseline", xLabel: "configuration", yLabel: `p50 / ${state.baseline}`,
        yFormat: (v) => `${v}×`, reference: 1, onPick: picker.toggle, picked: picker }));
    };
    baselineSelect.addEventListener("change", () => {
      state.baseline = baselineSelect.value;
      replaceUrlParams({ baseline: state.baseline });
      draw();
    });
    const dimension = select("dimension", DIMENSIONS, state.dimension, (value) => {
      state.dimension = value;
      draw();
      replaceUrlParams({ dimension: value, baseline: state.baseline });
    });
    draw();
    return el("figure", { class: "figure", id: "figure-normalised" },
      el("figcaption", null, "Latency normalised to a baseline (Fig. 4) ", dimension, " baseline ", baselineSelect), holder,
      leftOutNote(evaluations));
  }

  function leftOutNote(evaluations) {
    const text = leftOutOfCharts(evaluations);
    return text && el("p", { class: "left-out" }, text);
  }

  const DISPUTED_TITLE = "This evaluation was sent more than once with different content: each copy is a row "
    + "and none can be told right. Left out of the charts.";

  function evaluationTable(evaluations, picker) {
    const rows = evaluationRows(evaluations).map((row) => {
      const box = el("input", { type: "checkbox", value: row.id, title: "select for compare" });
      box.addEventListener("change", () => picker.toggle(row.id));
      const cells = row.cells.map((cell, index) => el("td",
        NUMERIC_COLUMNS.has(EVALUATION_COLUMNS[index][0]) ? { class: "num" } : null, cell));
      const trace = row.traceId
        ? el("a", { class: "trace-link", href: `/traces/${encodeURIComponent(row.traceId)}` }, "trace")
        : el("span", { class: "muted" }, "—");
      const mark = row.disputed ? el("span", { class: "disputed", title: DISPUTED_TITLE }, "disputed") : null;
      return el("tr", row.disputed ? { class: "disputed" } : null, el("td", null, box, mark), ...cells, el("td", null, trace));
    });
    return table(["", ...EVALUATION_COLUMNS.map(([label]) => label), "trace"], rows, "evaluations");
  }

  // "N evaluations", and the rows they take when some are disputed (a row per copy).
  function countText(evaluations) {
    const count = new Set(evaluations.map((e) => `${e.trace_id}/${e.span_id}`)).size;
    const copies = evaluations.filter(isDisputed).length;
    return `${count} evaluations${copies ? ` (${evaluations.length} rows: ${copies} disputed copies)` : ""}`;
  }

  async function renderEvaluations(main) {
    document.title = "mlscope: evaluations";
    const filter = parseEvaluationFilter(location.search);
    const choices = parseChartChoices(location.search);
    const [{ evaluations }, dispatch] = await Promise.all([
      fetchJson(`/api/evaluations${evaluationFilterQuery(filter)}`),
      // A query process started with --no-dispatch serves no predictors or jobs: evaluations still show.
      Promise.all([fetchJson("/api/predictors"), fetchJson(`/api/jobs?latest=${RECENT_JOBS}`)]).catch((error) => error)]);
    const form = filterForm(filter, evaluations, (next) => {
      history.pushState(null, "", evaluationsUrl(next, location.search));
      renderEvaluations(main).catch((error) => showError(main, error));
    });
    const picker = comparePicker(main, evaluations);
    main.replaceChildren(
      el("h1", null, "Evaluations"), form,
      evaluations.length
        ? el("div", null,
          el("div", { class: "charts" }, batchFigure(evaluations, picker, choices), normalisedFigure(evaluations, picker, choices)),
          el("p", { class: "muted" }, "A point opens its trace; shift-click picks it for compare. ",
            `${countText(evaluations)} `, picker.link),
          evaluationTable(evaluations, picker))
        : el("p", { class: "muted" }, "No evaluations match."),
      ...(dispatch instanceof Error
        ? [el("p", { class: "muted" }, `Predictors and jobs: ${dispatch.message}`)]
        : dispatchSections(dispatch[0].predictors, dispatch[1].jobs)));
  }

  function compareTable(headers, rows, className) {
    return table(headers, rows.map((cells) => el("tr", null,
      ...cells.map((cell, index) => el("td", index ? { class: "num" } : null, cell)))), `compare ${className}`);
  }

  // A diff section (layers, ops or levels) as a table sorted by |delta| first; a header click
  // sorts on its column (again: the other way).
  function diffTable(rows, keyLabel, className) {
    const columns = [["key", keyLabel], ["a_ns", "a"], ["b_ns", "b"], ["delta_ns", "Δ b − a"], ["ratio", "b/a"]];
    const state = { column: "delta_ns", descending: true };
    const body = el("tbody");
    const draw = () => body.replaceChildren(...sortDiffRows(rows, state.column, state.descending).map((row) => el("tr", null,
      el("td", null, row.key), el("td", { class: "num" }, formatDuration(row.a_ns)), el("td", { class: "num" }, formatDuration(row.b_ns)),
      el("td", { class: "num" }, `${row.delta_ns > 0 ? "+" : ""}${formatDuration(row.delta_ns)}`),
      el("td", { class: "num" }, formatRatio(row.ratio)))));
    const headers = columns.map(([column, label]) => {
      const button = el("button", { type: "button", class: "sort", "data-column": column }, label);
      button.addEventListener("click", () => {
        state.descending = state.column === column ? !state.descending : column !== "key";
        state.column = column;
        draw();
      });
      return el("th", null, button);
    });
    draw();
    return el("table", { class: `grid diff ${className}` }, el("thead", null, el("tr", null, ...headers)), body);
  }

  function onlyOnOneSide(side, layers) {
    if (!layers.length) return null;
    return el("section", null, el("h3", null, `Layers only in ${side}`),
      table(["path", "type", "calls", "total"], layers.map((layer) => el("tr", null, el("td", null, layer.path),
        el("td", null, layer.type || "—"), el("td", { class: "num" }, String(layer.calls)),
        el("td", { class: "num" }, formatDuration(layer.total_ns)))), `only-${side}`));
  }

  function diffSections(diff) {
    const keyed = (rows, name) => rows.map((row) => ({ ...row, key: String(row[name]), a_ns: Number(row.a_ns),
      b_ns: Number(row.b_ns), delta_ns: Number(row.delta_ns) }));
    const section = (title, rows, keyLabel, className) => (rows.length
      ? [el("h3", null, title), diffTable(rows, keyLabel, className)] : []);
    return [
      ...section("Layers, matched by module path (total time)", keyed(diff.layers, "path"), "layer", "diff-layers"),
      el("div", { class: "only" }, onlyOnOneSide("a", diff.a_only), onlyOnOneSide("b", diff.b_only)),
      ...section("Ops, by name (self time)", keyed(diff.ops, "name"), "op", "diff-ops"),
      ...section("Levels (total time)", keyed(diff.levels, "level"), "level", "diff-levels"),
    ];
  }

  function choiceLabel(choice) {
    return choice.trace_id && !choice.span_id
      ? `trace: ${choice.root_name || "(no root)"} · ${choice.service} · ${formatTime(choice.start_ns)}`
      : `evaluation: ${choice.model} · ${choice.framework} · batch ${choice.batch_size} · ${choice.system_name || choice.system}`
        + (isDisputed(choice) ? ` · disputed copy ${choice.content_hash}` : "");
  }

  // /compare without two ids: pick two of the recent traces and evaluations.
  async function comparePickerPage(main, problem) {
    const [{ traces }, { evaluations }] = await Promise.all([fetchJson("/api/traces?limit=100"), fetchJson("/api/evaluations")]);
    // An option's value is unique (a disputed evaluation's copies share their span id): the
    // choice it stands for is looked up by it.
    const choices = [...traces.map((t) => ({ value: t.trace_id, id: t.trace_id, copy: null, label: choiceLabel(t) })),
      ...evaluations.map((e) => ({ value: evaluationKey(e), ...compareChoice(e), label: choiceLabel(e) }))];
    const pick = (name, index) => {
      const node = el("select", { name }, ...choices.map(({ value, label }) => el("option", { value }, label)));
      if (choices[index]) node.value = choices[index].value;
      return node;
    };
    const [a, b] = [pick("a", 0), pick("b", 1)];
    const form = el("form", { class: "filters", id: "compare-pick", action: "/compare" },
      el("label", null, "a ", a), el("label", null, "b ", b), el("button", { type: "submit" }, "Compare"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const [x, y] = [a, b].map((node) => choices.find((choice) => choice.value === node.value));
      history.pushState(null, "", compareHref(x, y));
      route();
    });
    main.replaceChildren(el("h1", null, "Compare"), problem ? el("p", { class: "error" }, problem) : null,
      choices.length >= 2 ? form : el("p", { class: "muted" }, "Fewer than two traces or evaluations to compare."));
  }

  // Evaluation `id`'s rows -> {evaluation: copy `copy` (its content hash) or the first row, copies}.
  async function findEvaluation(id, copy) {
    const { evaluations } = await fetchJson(`/api/evaluations?span_id=${encodeURIComponent(id)}`);
    if (!evaluations.length) throw new Error(`no evaluation ${id}`);
    const evaluation = copy ? evaluations.find((e) => e.content_hash === copy) : evaluations[0];
    if (!evaluation) throw new Error(`evaluation ${id} has no copy ${copy}`);
    return { evaluation, copies: evaluations };
  }

  // The compare page's warning for side `side` when its evaluation is disputed, else null:
  // GET /api/diff (the timelines and the diff) reads the copy its trace's timeline keeps.
  function disputeWarning(side, found, picked) {
    const { evaluation, copies } = found;
    if (!isDisputed(evaluation)) return null;
    const others = copies.filter((e) => e.content_hash !== evaluation.content_hash).map((e) => e.content_hash);
    return `${side}: evaluation ${evaluation.span_id} is disputed: it was sent again with other content, and `
      + `${copies.length} copies are stored (content hashes ${[evaluation.content_hash, ...others].join(", ")}). `
      + `Its metrics here are copy ${evaluation.content_hash} (${picked ? "the one picked" : "the first listed"}); `
      + "the timelines and the diff read the copy its trace's timeline keeps (the earliest), which may be another.";
  }

  function evaluationSections(evalA, evalB) {
    const result = compareEvaluations(evalA, evalB);
    return [
      compareTable(["configuration", "a", "b"], result.config.map((row) => [row.label, row.a, row.b]), "config"),
      el("h3", null, "Metrics"),
      compareTable(["metric", "a", "b", "b/a"], result.metrics.map((row) => [row.label, row.a, row.b, formatRatio(row.ratio)]), "metrics"),
    ];
  }

  // One side of the compare page's timelines: a trace id (its whole trace) or an evaluation id
  // (its span's subtree, read from its trace's compact form) -> {title, columns, fetchWindow,
  // href} or {title, problem} when it cannot be drawn.
  async function compareSide(id, findItsEvaluation) {
    const evaluation = TRACE_ID.test(id) ? null : (await findItsEvaluation()).evaluation;
    const traceId = evaluation ? evaluation.trace_id : id;
    const href = `/traces/${encodeURIComponent(traceId)}`;
    const { trace, fetchWindow } = await loadTrace(`/api/traces/${encodeURIComponent(traceId)}`, "", WINDOWED_OVER);
    if (!evaluation) {
      const root = trace.span_id.length ? trace.strings[trace.name[0]] : "(no spans)";
      return { title: `trace ${traceId}: ${root}`, columns: trace, fetchWindow, href };
    }
    // A disputed evaluation's timeline is the copy its trace keeps, not necessarily the one picked.
    const title = isDisputed(evaluation)
      ? `${choiceLabel({ ...evaluation, conflict: 0 })} · disputed: the copy its trace keeps · span ${id}`
      : `${choiceLabel(evaluation)} · span ${id}`;
    const columns = fetchWindow ? null : window.mlscopeTimelineLib.subtreeColumns(trace, id);
    return columns ? { title, columns, fetchWindow: null, href: `${href}?span=${encodeURIComponent(id)}` }
      : { title, problem: fetchWindow ? "its trace is read a window at a time: open it on its trace page" : "its span is not in its trace" };
  }

  function extentOf(columns) {
    let end = 0;
    columns.start_ns.forEach((start, i) => { end = Math.max(end, start + columns.duration_ns[i]); });
    return end;
  }

  // Two timelines on one time axis: the same ns per pixel, each from its own start; a zoom or a
  // pan on either moves both. Under each, the span last clicked there.
  function compareTimelines(sides) {
    const drawn = sides.filter((side) => side.columns);
    const extentNs = Math.max(0, ...drawn.map((side) => extentOf(side.columns)));
    const timelines = [];
    const lanes = sides.map((side, k) => {
      const heading = el("h3", null, `${"ab"[k]}: `, el("a", { href: side.href || null }, side.title));
      if (!side.columns) return el("div", { class: "compare-lane" }, heading, el("p", { class: "muted" }, side.problem));
      const picked = el("p", { class: "muted picked-span" }, "Click a span for its name and time.");
      const timeline = window.mlscopeTimelineLib.createTimeline({
        columns: side.columns, levels: LEVELS, defaultLevel: DEFAULT_LEVEL, extentNs, fetchWindow: side.fetchWindow,
        onSelect: (i) => picked.replaceChildren(i < 0 ? "Click a span for its name and time." : `${timeline.model.labels[i]}: `
          + `${formatDuration(timeline.model.ends[i] - timeline.model.starts[i])} from +${formatDuration(timeline.model.starts[i])}`),
        onViewMove: (view) => timelines.forEach((other) => { if (other !== timeline) other.setView(view); }),
      });
      timelines.push(timeline);
      return el("div", { class: "compare-lane" }, heading, timeline.element, picked);
    });
    replaceTimelines(timelines);
    window.mlscopeCompareTimelines = timelines;
    return el("section", { class: "compare-timelines", "data-testid": "compare-timelines" },
      el("p", { class: "muted" }, "One time scale, each from its own start. W/S zoom · A/D pan (the timeline last pointed at) · "
        + "wheel zooms · drag pans: both follow."), ...lanes);
  }

  async function renderCompare(main) {
    document.title = "mlscope: compare";
    const params = new URLSearchParams(location.search);
    const a = (params.get("a") || "").trim().toLowerCase();
    const b = (params.get("b") || "").trim().toLowerCase();
    const kind = compareKind(a, b);
    if (kind === null) {
      const problem = a || b ? "compare needs ?a=&b=, each a trace id (32 hex) or an evaluation id (16 hex)" : null;
      await comparePickerPage(main, problem);
      return;
    }
    // An evaluation is looked up once, for its metrics, its warning and its timeline; ?a_copy=
    // and ?b_copy= pick a disputed evaluation's copy (a content hash, kept as text).
    const lookups = new Map();
    const sides = [["a", a], ["b", b]].map(([name, id]) => {
      const copy = params.get(`${name}_copy`);
      const find = () => {
        if (!lookups.has(`${id} ${copy}`)) lookups.set(`${id} ${copy}`, findEvaluation(id, copy));
        return lookups.get(`${id} ${copy}`);
      };
      return { name, id, copy, find };
    });
    const [diff, evaluationsShown, timelineSides, warnings] = await Promise.all([
      fetchJson(`/api/diff?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`),
      kind === "evaluation" ? Promise.all(sides.map((side) => side.find()))
        .then(([x, y]) => evaluationSections(x.evaluation, y.evaluation)) : [],
      Promise.all(sides.map((side) => compareSide(side.id, side.find).catch((error) => ({ title: side.id, problem: error.message })))),
      Promise.all(sides.map(async (side) => (EVALUATION_ID.test(side.id)
        ? disputeWarning(side.name, await side.find(), Boolean(side.copy)) : null))),
    ]);
    // The diff names what it compared: a trace id, or "trace/span" for an evaluation.
    const traceLink = (label) => el("a", { href: `/traces/${encodeURIComponent(String(label).split("/")[0])}` }, String(label));
    main.replaceChildren(
      el("h1", null, kind === "evaluation" ? "Compare evaluations" : "Compare traces"),
      el("div", { class: "meta" }, el("span", null, "a: ", traceLink(diff.a)), el("span", null, "b: ", traceLink(diff.b)),
        el("a", { href: "/compare" }, "pick others")),
      ...warnings.filter(Boolean).map((text) => el("p", { class: "warnings disputed-warning" }, text)),
      ...evaluationsShown, compareTimelines(timelineSides), ...diffSections(diff));
  }

  function route() {
    const main = document.getElementById("main");
    const path = location.pathname;
    const traceMatch = path.match(/^\/traces\/([^/]+)\/?$/);
    let page;
    if (path === "/") page = renderTraceList(main);
    else if (traceMatch) page = renderTrace(main, decodeURIComponent(traceMatch[1]));
    else if (path === "/sql") page = Promise.resolve(renderSql(main));
    else if (path === "/evaluations" || path === "/evaluations/") page = renderEvaluations(main);
    else if (path === "/compare" || path === "/compare/") page = renderCompare(main);
    else page = Promise.reject(new Error(`no page at ${path}`));
    page.catch((error) => showError(main, error));
  }

  async function start() {
    const conventions = await fetchJson("/api/conventions");
    LEVELS = Object.freeze([...conventions.levels]);
    DEFAULT_LEVEL = conventions.default_level;
    window.mlscopeViewer = {
      attributes: Object.freeze({ ...conventions.attributes }),
      formatDuration, parseLevels, levelsParam, parseJson,
      parseEvaluationFilter, evaluationFilterQuery, evaluationRows, evaluationKey, batchSeries, normalisedGroups, compareKind, sortDiffRows, compareEvaluations, toCsv, traceListParams,
    };
    window.addEventListener("popstate", route);
    route();
  }

  start().catch((error) => showError(document.getElementById("main"), error));
})();
