// The operator console. Plain JavaScript over the admin API: the view and
// its filters live in the URL (shareable), every value from the API is put
// in the page as text (an event's body and headers are hostile), and the
// admin token, when one is needed, is kept in this tab's sessionStorage and
// sent as Authorization, never in a URL or a cookie.
"use strict";

const TOKEN_KEY = "wedsync-sidecar.admin-token";
const STATUSES = ["", "pending", "delivered", "partial", "dead"];
const FILTERS = ["source", "type", "status", "target", "since", "until"];
const PAGE_SIZE = 50;

const state = { overview: null, timers: [], cursors: [] };

// ---- DOM helpers ---------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function statusText(value) {
  const text = value === null || value === undefined ? "—" : String(value);
  return h("span", { class: "status status-" + text.replace(/[^a-z_]/g, "") }, text);
}

function dl(pairs) {
  return h("dl", {}, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]));
}

function main() { return document.getElementById("main"); }

function show(...nodes) {
  const el = main();
  el.replaceChildren(...nodes.flat().filter(Boolean));
}

function notice(text, error) {
  return h("p", { class: error ? "notice error" : "notice", role: error ? "alert" : "status" }, text);
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 120) return seconds + " s";
  if (seconds < 7200) return Math.round(seconds / 60) + " min";
  if (seconds < 172800) return Math.round(seconds / 3600) + " h";
  return Math.round(seconds / 86400) + " d";
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

// What the server said in the page: "token_required=1 read_only=0".
const PAGE = Object.fromEntries(
  (document.querySelector('meta[name="wedsync-console"]')?.content || "")
    .split(" ").filter(Boolean).map((pair) => pair.split("=")));

function readOnly() {
  return PAGE.read_only === "1" ||
    !!(state.overview && state.overview.console && state.overview.console.read_only);
}

// ---- The admin API -------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || "HTTP " + status);
    this.status = status;
  }
}

async function api(method, path, { retry = true } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["Content-Type"] = "application/json";
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const answer = await fetch(path, {
    method, headers, body: method === "POST" ? "{}" : undefined,
    credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer",
  });
  const type = answer.headers.get("content-type") || "";
  const body = type.includes("json") ? await answer.json().catch(() => null) : null;
  if (answer.status === 401 && retry) {
    await askForToken(token ? "The admin token was not accepted." : "This sidecar needs its admin token.");
    return api(method, path, { retry: true });
  }
  if (!answer.ok) throw new ApiError(answer.status, body);
  return body;
}

function askForToken(reason) {
  return new Promise((resolve) => {
    const input = h("input", { id: "admin-token", type: "password", autocomplete: "off", required: true });
    const form = h("form", { class: "filters", "aria-label": "Sign in" },
      h("label", { for: "admin-token" }, "Admin token", input),
      h("button", { type: "submit", class: "primary" }, "Use token"));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value);
      resolve();
    });
    show(h("h1", {}, "Admin token"), notice(reason), form,
      h("p", { class: "muted" }, "Kept in this tab only, sent as Authorization: Bearer."));
    input.focus();
  });
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const text = q.toString();
  return text ? "?" + text : "";
}

// ---- Router --------------------------------------------------------------

function go(url) {
  history.pushState(null, "", url);
  route();
}

function stopTimers() {
  state.timers.forEach(clearInterval);
  state.timers = [];
}

async function route() {
  stopTimers();
  const path = location.pathname;
  const params = new URLSearchParams(location.search);
  const view = path === "/events" ? (params.get("status") === "dead" ? "dead" : "events")
    : path === "/event" ? "events" : path === "/config" ? "config" : "overview";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  try {
    if (PAGE.token_required === "1" && !sessionStorage.getItem(TOKEN_KEY)) {
      await askForToken("This sidecar needs its admin token.");
    }
    if (!state.overview) await loadOverview();
    if (path === "/events") await eventsView(params);
    else if (path === "/event") await eventView(params.get("source") || "", params.get("id") || "");
    else if (path === "/config") await configView();
    else await overviewView();
  } catch (error) {
    show(h("h1", {}, "Cannot load this page"), notice(error.message, true));
  }
}

async function loadOverview() {
  state.overview = await api("GET", "/admin/overview");
  const mode = document.getElementById("mode");
  mode.textContent = "v" + state.overview.version + (readOnly() ? " · read-only" : "");
  return state.overview;
}

// ---- Overview ------------------------------------------------------------

async function overviewView() {
  const render = (o) => {
    const store = o.store;
    const queue = o.queue;
    const cards = [
      h("section", { class: "card" }, h("h2", {}, "Sidecar"), dl([
        ["Version", o.version], ["Uptime", ago(o.uptime_s)],
        ["Egress", o.listeners.egress], ["Ingress", o.listeners.ingress], ["Admin", o.listeners.admin],
        ["Last reload", o.last_reload ? [new Date(o.last_reload.at_ms).toISOString(), " ", statusText(o.last_reload.result)] : "none since start"],
      ])),
      store && h("section", { class: "card" }, h("h2", {}, "Store"), dl([
        ["Kind", store.kind], ["Used", bytes(store.used_bytes) + (store.capacity_bytes ? " of " + bytes(store.capacity_bytes) : "")],
        ["Accepting", store.paused_for_space ? statusText("paused for space") : statusText(store.answering ? "yes" : "error")],
        store.settings && store.settings["connected replicas"] !== undefined && ["Replicas", store.settings["connected replicas"]],
        store.last_error && ["Last error", store.last_error],
      ])),
      queue && h("section", { class: "card" }, h("h2", {}, "Queue"), queue.error ? notice(queue.error, true) : dl([
        ["High", queue.high], ["Normal", queue.normal], ["Low", queue.low],
        ["Oldest waiting", ago(queue.oldest_pending_age_s)],
      ])),
      h("section", { class: "card" }, h("h2", {}, "Events"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", { class: "num" }, "Accepted"), h("th", { class: "num" }, "Delivered"), h("th", { class: "num" }, "Dead"))),
          h("tbody", {}, [["Last 5 min", o.events.last_5m], ["Last 60 min", o.events.last_60m]].map(([name, w]) =>
            h("tr", {}, h("th", {}, name + (w.over_s < (name.includes("60") ? 3600 : 300) - 60 ? " (since start)" : "")),
              h("td", { class: "num" }, w.accepted), h("td", { class: "num" }, w.delivered), h("td", { class: "num" }, w.dead)))))),
    ];
    const recover = (o.recover || []).length ? h("table", { "aria-label": "Gap repair" },
      h("thead", {}, h("tr", {}, ["Webhook", "Kind", "Last run", "Result", "Checkpoint", "Accepted", "Error"].map((t) => h("th", {}, t)))),
      h("tbody", {}, o.recover.map((r) => h("tr", {},
        h("td", {}, r.webhook), h("td", {}, r.kind), h("td", {}, r.last_run_at || "not yet"),
        h("td", {}, r.outcome ? statusText(r.outcome) : "—"), h("td", {}, r.checkpoint || "—"),
        h("td", { class: "num" }, r.last ? r.last.accepted + (r.last.requested ? ` (${r.last.requested} asked again)` : "") : "—"),
        h("td", {}, r.error || "—"))))) : null;
    const services = h("table", { "aria-label": "Egress services" },
      h("thead", {}, h("tr", {}, ["Service", "Route", "Breaker", "Rate limit", "Left now", "Provider pause"].map((t) => h("th", {}, t)))),
      h("tbody", {}, (o.services || []).map((s) => h("tr", {},
        h("td", {}, s.name), h("td", {}, h("code", {}, s.route)),
        h("td", {}, s.circuit_breaker ? statusText(s.circuit_breaker.state) : "—"),
        h("td", {}, s.rate_limit ? s.rate_limit.requests + " per " + s.rate_limit.per + " (" + s.rate_limit.scope + ")" : "—"),
        h("td", {}, s.rate_limit && s.rate_limit.remaining !== null ? String(s.rate_limit.remaining) : "—"),
        h("td", {}, s.provider_pause_ms ? Math.ceil(s.provider_pause_ms / 1000) + " s" : "—")))));
    const upstreamRows = [];
    for (const [name, group] of Object.entries(o.upstreams || {})) {
      for (const b of group.backends) {
        upstreamRows.push(h("tr", {}, h("td", {}, name), h("td", {}, b.addr), h("td", {}, statusText(b.health)),
          h("td", {}, statusText(b.breaker)), h("td", { class: "num" }, b.in_flight)));
      }
    }
    const upstreams = h("table", { "aria-label": "Upstream groups" },
      h("thead", {}, h("tr", {}, ["Group", "Backend", "Health", "Breaker"].map((t) => h("th", {}, t)), h("th", { class: "num" }, "In flight"))),
      h("tbody", {}, upstreamRows));
    show(h("h1", {}, "Overview"), h("div", { class: "grid" }, cards.filter(Boolean)),
      h("h2", {}, "Egress services"), (o.services || []).length ? services : h("p", { class: "muted" }, "No egress services."),
      h("h2", {}, "Upstream groups"), upstreamRows.length ? upstreams : h("p", { class: "muted" }, "No upstream groups."),
      recover && h("h2", {}, "Gap repair"), recover,
      h("p", { class: "muted" }, "Refreshes every 5 s."));
  };
  render(state.overview);
  render(await loadOverview());
  state.timers.push(setInterval(async () => {
    try { render(await loadOverview()); } catch (error) { /* the next refresh tries again */ }
  }, 5000));
}

// ---- Events --------------------------------------------------------------

function filtersFrom(params) {
  const filters = {};
  for (const name of FILTERS) filters[name] = params.get(name) || "";
  for (const [k, v] of params) if (k.startsWith("context.")) { filters.contextField = k.slice(8); filters.contextValue = v; }
  return filters;
}

function filterQuery(filters) {
  const q = {};
  for (const name of FILTERS) q[name] = filters[name];
  if (filters.contextField) q["context." + filters.contextField] = filters.contextValue || "";
  return q;
}

function field(label, id, value, opts = {}) {
  const input = opts.options
    ? h("select", { id, name: id }, opts.options.map((o) => h("option", { value: o, selected: o === value }, o || "any")))
    : h("input", { id, name: id, value, placeholder: opts.placeholder || "", list: opts.list, size: opts.size || 14 });
  return h("label", { for: id }, label, input);
}

async function eventsView(params) {
  const filters = filtersFrom(params);
  const cursor = params.get("cursor") || "";
  const webhooks = (state.overview && state.overview.webhooks) || [];
  const targets = Object.keys((state.overview && state.overview.upstreams) || {});
  const form = h("form", { class: "filters", "aria-label": "Filters" },
    h("datalist", { id: "sources" }, webhooks.map((w) => h("option", { value: w }))),
    h("datalist", { id: "targets" }, targets.map((t) => h("option", { value: t }))),
    field("Source", "f-source", filters.source, { list: "sources" }),
    field("Type", "f-type", filters.type, { placeholder: "payment_intent.*" }),
    field("Status", "f-status", filters.status, { options: STATUSES }),
    field("Target", "f-target", filters.target, { list: "targets" }),
    field("Context field", "f-context-field", filters.contextField || "", { placeholder: "wedding_id", size: 10 }),
    field("Context value", "f-context-value", filters.contextValue || "", { size: 10 }),
    field("Since", "f-since", filters.since, { placeholder: "2h or RFC 3339", size: 10 }),
    field("Until", "f-until", filters.until, { placeholder: "RFC 3339", size: 10 }),
    h("button", { type: "submit", class: "primary" }, "Apply"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const value = (id) => document.getElementById(id).value.trim();
    const next = {
      source: value("f-source"), type: value("f-type"), status: value("f-status"), target: value("f-target"),
      since: value("f-since"), until: value("f-until"),
      contextField: value("f-context-field"), contextValue: value("f-context-value"),
    };
    state.cursors = [];
    go("/events" + query(filterQuery(next)));
  });

  const idInput = h("input", { id: "event-id", name: "event-id", size: 28, placeholder: "evt_…" });
  const search = h("form", { class: "filters", role: "search", "aria-label": "Find an event by id" },
    h("label", { for: "event-id" }, "Event id", idInput), h("button", { type: "submit" }, "Find"));
  search.addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = idInput.value.trim();
    if (!id) return;
    const sources = filters.source ? [filters.source] : webhooks;
    for (const source of sources) {
      try {
        await api("GET", "/admin/events/" + encodeURIComponent(source) + "/" + encodeURIComponent(id));
        go("/event" + query({ source, id }));
        return;
      } catch (error) {
        if (error.status !== 404) { status.replaceChildren(notice(error.message, true)); return; }
      }
    }
    status.replaceChildren(notice("No event " + id + " in " + (filters.source || "any source") + ".", true));
  });

  const status = h("div", { "aria-live": "polite" });
  // Dead letters: every dead target of every event (an event with one
  // target dead and one delivered is `partial` in the log), from the
  // dead-letter API, each with Replay and Purge.
  if (filters.status === "dead") return deadLettersView(filters, cursor, search, form, status);
  const page = await api("GET", "/admin/events" + query({ ...filterQuery(filters), limit: PAGE_SIZE, cursor }));
  const tbody = h("tbody", {});
  const seen = new Set();
  const row = (e) => {
    seen.add(e.source + "\n" + e.id);
    return h("tr", {},
      h("td", {}, e.received_at), h("td", {}, e.source), h("td", {}, eventLink(e.source, e.id)), h("td", {}, e.type || "—"),
      h("td", {}, statusText(e.status)),
      h("td", {}, e.targets.map((t, i) => [i ? ", " : "", t.target, " ", statusText(t.status)])));
  };
  page.items.forEach((e) => tbody.append(row(e)));
  const table = h("table", { "aria-label": "Events" },
    h("thead", {}, h("tr", {}, ["Received", "Source", "Event id", "Type", "Status", "Targets"].map((t) => h("th", {}, t)))),
    tbody);
  const count = h("p", { class: "muted", id: "count" },
    page.items.length + " of about " + page.total_estimate + (cursor ? " (page " + (state.cursors.length + 1) + ")" : ""));
  const live = h("input", { type: "checkbox", id: "live", disabled: !!cursor });
  live.addEventListener("change", () => {
    stopTimers();
    if (!live.checked) return;
    state.timers.push(setInterval(async () => {
      try {
        const fresh = await api("GET", "/admin/events" + query({ ...filterQuery(filters), limit: PAGE_SIZE }));
        const added = fresh.items.filter((e) => !seen.has(e.source + "\n" + e.id));
        added.reverse().forEach((e) => tbody.prepend(row(e)));
        count.textContent = tbody.children.length + " shown, about " + fresh.total_estimate + " in all";
      } catch (error) { /* tried again on the next tick */ }
    }, 2000));
  });
  const bulk = readOnly() ? null : bulkRedeliver(filters, status);
  show(h("h1", {}, "Events"), search, form, status,
    h("div", { class: "row" }, count, ...paging(filters, cursor, page.next), h("label", { for: "live" }, live, " Live"), bulk),
    page.items.length ? table : h("p", { class: "muted" }, "No event matches."));
}

function eventLink(source, id) {
  const link = h("a", { href: "/event" + query({ source, id }) }, id);
  link.addEventListener("click", (ev) => { ev.preventDefault(); go(link.getAttribute("href")); });
  return link;
}

/// Previous and Next: the cursors walked so far are kept in this tab.
function paging(filters, cursor, next) {
  const prev = h("button", { type: "button", disabled: state.cursors.length === 0 }, "Previous");
  prev.addEventListener("click", () => {
    const back = state.cursors.pop();
    go(location.pathname + query({ ...filterQuery(filters), cursor: back || "" }));
  });
  const forward = h("button", { type: "button", disabled: !next }, "Next");
  forward.addEventListener("click", () => {
    state.cursors.push(cursor);
    go(location.pathname + query({ ...filterQuery(filters), cursor: next }));
  });
  return [prev, forward];
}

async function deadLettersView(filters, cursor, search, form, status) {
  const page = await api("GET", "/admin/dead-letters" + query({
    webhook: filters.source, target: filters.target, limit: PAGE_SIZE, cursor }));
  const rows = page.items.map((d) => h("tr", {},
    h("td", {}, d.dead_at), h("td", {}, d.webhook), h("td", {}, eventLink(d.webhook, d.event_id)),
    h("td", {}, d.event_type || "—"), h("td", {}, d.target), h("td", {}, statusText("dead"), " ", d.reason),
    h("td", {}, d.last_error || "—"),
    readOnly() ? null : h("td", {}, deadLetterButtons({ id: d.event_id, targets: [{ target: d.target, status: "dead", dead_letter: d.id }] }, status))));
  const table = h("table", { "aria-label": "Events" },
    h("thead", {}, h("tr", {}, ["Dead since", "Source", "Event id", "Type", "Target", "Status", "Last error"].map((t) => h("th", {}, t)),
      readOnly() ? null : h("th", {}, "Actions"))),
    h("tbody", {}, rows));
  show(h("h1", {}, "Dead letters"), search, form, status,
    h("div", { class: "row" }, h("p", { class: "muted" }, rows.length + (page.next ? " shown, more on the next page" : " dead letters")),
      ...paging(filters, cursor, page.next)),
    rows.length ? table : h("p", { class: "muted" }, "No dead letter."));
}

function bulkRedeliver(filters, status) {
  const start = h("button", { type: "button" }, "Redeliver all matching");
  start.addEventListener("click", async () => {
    try {
      const counted = await api("POST", "/admin/events/redeliver" + query({ ...filterQuery(filters), dry_run: "true" }));
      const n = counted.matched;
      if (!n) { status.replaceChildren(notice("No event matches this filter: nothing to redeliver.")); return; }
      const confirm = h("button", { type: "button", class: "primary" }, "Confirm");
      const cancel = h("button", { type: "button" }, "Cancel");
      cancel.addEventListener("click", () => status.replaceChildren());
      confirm.addEventListener("click", async () => {
        confirm.disabled = true;
        try {
          // `max` is what was shown: if more match by now, the API refuses.
          const done = await api("POST", "/admin/events/redeliver" + query({ ...filterQuery(filters), max: n }));
          status.replaceChildren(notice("Queued " + done.queued + " events again."));
        } catch (error) {
          status.replaceChildren(notice(error.message + " Count again before redelivering.", true));
        }
      });
      status.replaceChildren(h("div", { class: "notice", role: "status" },
        n + " events match this filter and will be queued again. ", confirm, " ", cancel));
    } catch (error) {
      status.replaceChildren(notice(error.message, true));
    }
  });
  return start;
}

function deadLetterButtons(e, status) {
  return e.targets.filter((t) => t.status === "dead" && t.dead_letter).map((t) => {
    const replay = h("button", { type: "button", "aria-label": "Replay " + e.id + " to " + t.target }, "Replay");
    const purge = h("button", { type: "button", class: "danger", "aria-label": "Purge " + e.id + " to " + t.target }, "Purge");
    replay.addEventListener("click", async () => {
      try {
        await api("POST", "/admin/dead-letters/" + encodeURIComponent(t.dead_letter) + "/replay");
        status.replaceChildren(notice("Replayed " + e.id + " to " + t.target + "."));
        replay.disabled = purge.disabled = true;
      } catch (error) { status.replaceChildren(notice(error.message, true)); }
    });
    purge.addEventListener("click", async () => {
      try {
        await api("DELETE", "/admin/dead-letters/" + encodeURIComponent(t.dead_letter));
        status.replaceChildren(notice("Purged the dead letter of " + e.id + " to " + t.target + "."));
        replay.disabled = purge.disabled = true;
      } catch (error) { status.replaceChildren(notice(error.message, true)); }
    });
    return h("span", { class: "row" }, t.target + ": ", replay, purge);
  });
}

// ---- One event -----------------------------------------------------------

function prettyBody(e) {
  if (e.body_encoding === "base64") return e.body;
  try { return JSON.stringify(JSON.parse(e.body), null, 2); } catch (error) { return e.body; }
}

async function eventView(source, id) {
  const path = "/admin/events/" + encodeURIComponent(source) + "/" + encodeURIComponent(id);
  const e = await api("GET", path);
  const status = h("div", { "aria-live": "polite" });
  const redeliver = (target) => {
    const button = h("button", { type: "button", class: target ? "" : "primary" }, target ? "Redeliver" : "Redeliver to all targets");
    button.addEventListener("click", async () => {
      try {
        const done = await api("POST", path + "/redeliver" + query({ target }));
        status.replaceChildren(notice("Queued again for " + (target || "every target") + " (" + done.queued + ")."));
      } catch (error) { status.replaceChildren(notice(error.message, true)); }
    });
    return button;
  };
  const body = prettyBody(e);
  const copy = h("button", { type: "button" }, "Copy body");
  copy.addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(body); copy.textContent = "Copied"; }
    catch (error) { copy.textContent = "Select the text to copy"; }
  });
  const targets = e.targets.map((t) => h("section", { class: "target", "aria-label": "Target " + t.target },
    h("h3", {}, t.target, " ", statusText(t.status)),
    t.next_attempt_at ? h("p", { class: "muted" }, "Next attempt at " + t.next_attempt_at) : null,
    readOnly() ? null : h("div", { class: "row" }, redeliver(t.target),
      t.status === "dead" && t.dead_letter ? deadLetterButtons({ id: e.id, targets: [t] }, status) : null),
    t.attempts.length ? h("table", { "aria-label": "Attempts to " + t.target },
      h("thead", {}, h("tr", {}, ["Time", "Backend", "Status", "Duration", "Error", "Response"].map((x) => h("th", {}, x)))),
      h("tbody", {}, t.attempts.map((a) => h("tr", {},
        h("td", {}, a.at), h("td", {}, a.backend || "—"), h("td", {}, statusText(a.status)),
        h("td", { class: "num" }, a.duration_ms + " ms"), h("td", {}, a.error || "—"),
        h("td", {}, a.response ? h("code", {}, a.response) : "—")))))
      : h("p", { class: "muted" }, "No attempt yet.")));
  show(
    h("h1", {}, "Event ", h("code", {}, e.id)),
    status,
    h("div", { class: "grid" }, h("section", { class: "card" }, dl([
      ["Source", e.source], ["Type", e.type], ["Status", statusText(e.status)], ["Received", e.received_at],
      ["Finished", e.finished_at], ["Priority", e.priority], ["Trace id", e.trace_id ? h("code", {}, e.trace_id) : "—"],
      ["Size", bytes(e.size)],
    ])), h("section", { class: "card", "aria-label": "Context" }, h("h2", {}, "Context"),
      Object.keys(e.context || {}).length ? dl(Object.entries(e.context)) : h("p", { class: "muted" }, "None."))),
    h("h2", {}, "Targets"), readOnly() ? null : h("div", { class: "row" }, redeliver("")), targets,
    h("h2", {}, "Body"), h("div", { class: "row" }, copy, h("span", { class: "muted" }, e.content_type || "")),
    h("pre", { "aria-label": "Body" }, body),
    h("h2", {}, "Headers"),
    h("table", { "aria-label": "Headers" }, h("tbody", {}, (e.headers || []).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, h("code", {}, v)))))));
}

// ---- Config --------------------------------------------------------------

async function configView() {
  const config = await api("GET", "/admin/config");
  const reload = (await loadOverview()).last_reload;
  show(h("h1", {}, "Config"),
    h("section", { class: "card" }, h("h2", {}, "Last reload"), reload ? dl([
      ["Time", new Date(reload.at_ms).toISOString()], ["Result", statusText(reload.result)],
      reload.error && ["Error", h("pre", {}, reload.error)],
    ]) : h("p", { class: "muted" }, "No reload since the sidecar started.")),
    h("h2", {}, "Effective config (secrets redacted)"), h("pre", { "aria-label": "Effective config" }, JSON.stringify(config, null, 2)));
}

// ---- Start ---------------------------------------------------------------

document.addEventListener("click", (e) => {
  const link = e.target.closest && e.target.closest("a[href^='/']");
  if (!link || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
  e.preventDefault();
  state.cursors = [];
  go(link.getAttribute("href"));
});
window.addEventListener("popstate", route);
route();
