// Dragonfly's web UI: a small client of the JSON API, no framework and no build step.
//
// Safety: every value is put in the page with textContent (the `h` helper below); nothing is
// ever parsed as HTML, so a machine that names itself `<img src=x onerror=…>` shows as text.
// The session cookie is HttpOnly: this script never sees a credential. The server's CSP has
// no 'unsafe-inline', so there is no inline script or style anywhere.
//
// Live: one EventSource on /api/events, filtered to what the page shows. Events only say
// *when* to read the API again (the API is the truth): each event, a `resync` or a reconnect
// re-reads the current view, so a missed event costs nothing.
"use strict";

const $ = (id) => document.getElementById(id);

/** An element with attributes/properties and children (strings become text nodes). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** Calls the API; JSON in and out. Errors carry apid's own words. */
async function api(path, { method = "GET", body, type = "application/json", accept } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = type;
  if (accept) headers["Accept"] = accept;
  const res = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : (type === "application/json" ? JSON.stringify(body) : body),
  });
  if (res.status === 401 && path !== "/api/auth/login") { showLogin(); throw new ApiError(401, "Your session ended: sign in again."); }
  const text = await res.text();
  let data = null;
  if (text && (res.headers.get("content-type") || "").includes("json")) {
    try { data = JSON.parse(text); } catch { data = null; }
  } else { data = text; }
  if (!res.ok) {
    const msg = (data && data.message) || `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, msg);
  }
  return data;
}

function flash(message, ok = false) {
  const f = $("flash");
  f.textContent = message;
  f.className = ok ? "flash ok" : "flash";
  f.hidden = !message;
}

function bytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

function ago(ts) {
  if (!ts) return "–";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(ts)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

/** Every machine matching `query` (`state=…&labelSelector=…`), following the list's pages. */
async function allMachines(query = "") {
  const items = [];
  let after = null;
  do {
    const page = await api(`/api/machines?limit=500${query ? "&" + query : ""}${after ? "&after=" + encodeURIComponent(after) : ""}`);
    items.push(...page.items);
    after = page.next || null;
  } while (after);
  return items;
}

const state = (s) => h("span", { class: `state ${s || ""}` }, s || "–");
const labelsText = (labels) => Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(" ");
const enc = encodeURIComponent;

// ---- live updates ---------------------------------------------------------------------

let events = null;
let eventsQuery = null;
let refreshTimer = null;

/** (Re)opens the event stream for `query` (e.g. `machine=<id>`); `null` closes it. */
function follow(query) {
  if (query === eventsQuery && events) return;
  if (events) events.close();
  events = null;
  eventsQuery = query;
  if (query === null) { setLive(false); return; }
  events = new EventSource(`/api/events${query ? "?" + query : ""}`, { withCredentials: true });
  events.onopen = () => { setLive(true); scheduleRefresh(); };
  events.onerror = () => setLive(false);
  events.onmessage = scheduleRefresh;
  // Every event type: apid names them by their CloudEvents type.
  for (const t of ["resync", "hello"]) events.addEventListener(t, scheduleRefresh);
  const kinds = ["machine.registered", "machine.updated", "machine.approved", "machine.deleted",
    "workflow.created", "workflow.started", "workflow.progress", "workflow.succeeded",
    "workflow.failed", "workflow.timedout", "workflow.cancelled", "workflow.reported",
    "power.changed", "power.condition", "lease.granted", "boot.decided"];
  for (const k of kinds) events.addEventListener(`computer.dragonfly.${k}`, scheduleRefresh);
}

// Without the stream (a proxy that buffers it, apid restarting), the view is re-read on a
// timer instead, so the page never goes stale.
const POLL_OFFLINE_MS = 10000;
setInterval(() => { if (me && eventsQuery !== null && !(events && events.readyState === EventSource.OPEN)) scheduleRefresh(); }, POLL_OFFLINE_MS);

function setLive(on) {
  const l = $("live");
  l.textContent = on ? "live" : "offline";
  l.className = on ? "live on" : "live";
}

/** Re-reads the current view soon (events come in bursts: one read per burst). */
function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    // Someone is typing in a form of the view: redrawing would take their input. Later.
    const a = document.activeElement;
    if (a && $("view").contains(a) && ["INPUT", "TEXTAREA", "SELECT"].includes(a.tagName) && a.type !== "checkbox") {
      scheduleRefresh();
      return;
    }
    if (current && current.refresh) current.refresh().catch(showError);
  }, 250);
}

function showError(e) {
  if (e instanceof ApiError && e.status === 401) return;
  flash(e.message || String(e));
}

// ---- routing --------------------------------------------------------------------------

let me = null;
let current = null;

const routes = [
  [/^#\/machines\/([^/]+)$/, (m) => machineView(decodeURIComponent(m[1]))],
  [/^#\/workflows$/, () => workflowsView()],
  [/^#\/templates\/new$/, () => templateEdit(null)],
  [/^#\/templates\/([^/]+)$/, (m) => templateEdit(decodeURIComponent(m[1]))],
  [/^#\/templates$/, () => templatesView()],
  [/^#\/images$/, () => imagesView()],
  [/^#\/tokens$/, () => tokensView()],
  [/^#\/users$/, () => usersView()],
  [/^#\/account$/, () => accountView()],
  [/.*/, () => machinesView()],
];

async function route() {
  if (!me) return;
  flash("");
  const hash = location.hash || "#/machines";
  for (const a of document.querySelectorAll("#nav a")) {
    if (hash.startsWith(a.getAttribute("href"))) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  for (const [re, make] of routes) {
    const m = hash.match(re);
    if (m) {
      current = make(m);
      clearInterval(tickTimer);
      if (current.tick) {
        const view = current;
        tickTimer = setInterval(() => { if (current === view) view.tick().catch(() => {}); }, TICK_MS);
      }
      try { await current.refresh(); } catch (e) { showError(e); }
      follow(current.events ?? "");
      return;
    }
  }
}

let tickTimer = null;
const TICK_MS = 3000;

function mount(...children) {
  $("view").replaceChildren(...children);
}

// ---- machines -------------------------------------------------------------------------

const STATES = ["Discovered", "Registered", "OsAssigned", "Provisioning", "Ready", "Error"];
const POWER_ACTIONS = ["on", "off", "soft-off", "cycle", "reset", "status", "boot-pxe", "boot-disk"];

function machinesView() {
  const selected = new Set();
  let sortKey = "name";
  let sortDir = 1;
  let machines = [];
  const stateSel = h("select", { id: "f-state" }, h("option", { value: "" }, "All states"), STATES.map((s) => h("option", {}, s)));
  const labelIn = h("input", { id: "f-label", placeholder: "rack=r1,role=web", size: 16 });
  const textIn = h("input", { id: "f-text", type: "search", placeholder: "name, MAC, host…", size: 18 });
  const count = h("span", { class: "muted", role: "status" });
  const body = h("tbody");
  const head = h("thead");
  const bulk = h("div", { class: "card", hidden: true });
  const error = h("p", { class: "error", role: "alert" });

  const columns = [
    ["name", "Name", (m) => m.name],
    ["state", "State", (m) => m.state],
    ["mac", "MAC", (m) => m.hardware.macs[0] || ""],
    ["ip", "IP", (m) => m.reservedIp || ""],
    ["power", "Power", (m) => (m.power ? (m.power.condition ? "error" : m.power.state || "?") : "")],
    ["template", "OS", (m) => m.osTemplate || ""],
    ["labels", "Labels", (m) => labelsText(m.labels)],
    ["created", "Registered", (m) => m.createdAt],
  ];

  function render() {
    head.replaceChildren(h("tr", {},
      h("th", {}, h("input", {
        type: "checkbox", "aria-label": "Select all shown",
        checked: machines.length > 0 && machines.every((m) => selected.has(m.id)),
        onchange: (e) => { for (const m of machines) e.target.checked ? selected.add(m.id) : selected.delete(m.id); render(); },
      })),
      columns.map(([key, title]) => h("th", { "aria-sort": sortKey === key ? (sortDir > 0 ? "ascending" : "descending") : "none", class: key === "labels" || key === "ip" ? "hide-narrow" : "" },
        h("button", { type: "button", class: "sort", onclick: () => { sortDir = sortKey === key ? -sortDir : 1; sortKey = key; render(); } }, title)))));
    const get = columns.find((c) => c[0] === sortKey)[2];
    const rows = [...machines].sort((a, b) => String(get(a)).localeCompare(String(get(b))) * sortDir);
    body.replaceChildren(...rows.map((m) => h("tr", { "data-machine": m.name },
      h("td", {}, h("input", { type: "checkbox", "aria-label": `Select ${m.name}`, checked: selected.has(m.id), onchange: (e) => { e.target.checked ? selected.add(m.id) : selected.delete(m.id); renderBulk(); } })),
      h("td", {}, h("a", { href: `#/machines/${enc(m.name)}` }, m.name), m.hostname ? h("div", { class: "muted" }, m.hostname) : null),
      h("td", {}, state(m.state)),
      h("td", {}, m.hardware.macs[0] || "–"),
      h("td", { class: "hide-narrow" }, m.reservedIp || "–"),
      h("td", {}, m.power ? (m.power.condition ? h("span", { class: "state Error", title: m.power.condition }, "BMC error") : state(m.power.state || "?")) : h("span", { class: "muted" }, "no BMC")),
      h("td", {}, m.osTemplate || "–"),
      h("td", { class: "hide-narrow" }, labelsText(m.labels) || "–"),
      h("td", {}, ago(m.createdAt)),
    )));
    if (machines.length === 0 && !error.textContent) {
      const filtered = stateSel.value || labelIn.value || textIn.value;
      body.replaceChildren(h("tr", {}, h("td", { colspan: 9, class: "empty" },
        filtered ? "No machine matches these filters." : "No machines yet: power one on in the provisioning network.")));
    }
    count.textContent = `${machines.length} machine${machines.length === 1 ? "" : "s"}`;
    renderBulk();
  }

  async function renderBulk() {
    const ids = machines.filter((m) => selected.has(m.id));
    bulk.hidden = ids.length === 0;
    if (ids.length === 0) return;
    const labelIn2 = h("input", { placeholder: "key=value or key-", "aria-label": "Label to set or remove" });
    const tmplSel = h("select", { "aria-label": "Template to assign" }, h("option", { value: "" }, "Template…"));
    const powerSel = h("select", { "aria-label": "Power action" }, POWER_ACTIONS.map((a) => h("option", {}, a)));
    const out = h("p", { class: "error", role: "status" });
    api("/apis/dragonfly.computer/v1/templates").then((l) => {
      for (const t of l.items) tmplSel.append(h("option", {}, t.metadata.name));
    }).catch(() => {});
    const each = async (what, fn) => {
      const failed = [];
      for (const m of ids) { try { await fn(m); } catch (e) { failed.push(`${m.name}: ${e.message}`); } }
      out.textContent = failed.length ? `${what}: ${failed.length} failed\n${failed.join("\n")}` : "";
      if (!failed.length) flash(`${what}: done for ${ids.length} machine${ids.length === 1 ? "" : "s"}.`, true);
      await refresh();
    };
    bulk.replaceChildren(
      h("strong", {}, `${ids.length} selected`),
      h("div", { class: "toolbar" },
        labelIn2, h("button", { type: "button", onclick: () => each("Label", (m) => setLabel(m, labelIn2.value)) }, "Label"),
        tmplSel, h("button", { type: "button", onclick: () => { if (tmplSel.value) each("Assign OS", (m) => api(`/api/machines/${enc(m.id)}/provision`, { method: "POST", body: { template: tmplSel.value, reimage: m.state === "Ready" } })); } }, "Assign OS"),
        powerSel, h("button", { type: "button", onclick: () => each(`Power ${powerSel.value}`, (m) => api(`/api/machines/${enc(m.id)}/power`, { method: "POST", body: { action: powerSel.value } })) }, "Power"),
        h("button", { type: "button", class: "secondary", onclick: () => { selected.clear(); render(); } }, "Clear selection")),
      out);
  }

  async function refresh() {
    const q = [];
    if (stateSel.value) q.push(`state=${enc(stateSel.value)}`);
    if (labelIn.value.trim()) q.push(`labelSelector=${enc(labelIn.value.trim())}`);
    try {
      const items = await allMachines(q.join("&"));
      error.textContent = "";
      const t = textIn.value.trim().toLowerCase();
      machines = items.filter((m) => !t || [m.name, m.hostname, ...m.hardware.macs, m.reservedIp, labelsText(m.labels)]
        .some((v) => v && String(v).toLowerCase().includes(t)));
    } catch (e) {
      if (e.status === 422 || e.status === 400) { error.textContent = e.message; machines = []; } else throw e;
    }
    render();
  }

  for (const el of [stateSel, labelIn, textIn]) el.addEventListener(el === stateSel ? "change" : "input", () => refresh().catch(showError));
  mount(
    h("h1", {}, "Machines"),
    h("div", { class: "toolbar" },
      h("label", {}, "State", stateSel), h("label", {}, "Labels", labelIn), h("label", {}, "Search", textIn),
      h("span", { class: "grow" }), count),
    error, bulk,
    h("div", { class: "table-wrap" }, h("table", { id: "machines" }, h("caption", { class: "skip" }, "Machines"), head, body)));
  return { refresh, events: "types=machine,power,workflow" };
}

async function setLabel(m, change) {
  change = change.trim();
  const labels = { ...m.labels };
  if (/^[^=]+-$/.test(change)) delete labels[change.slice(0, -1)];
  else if (/^[^=]+=.*$/.test(change)) { const i = change.indexOf("="); labels[change.slice(0, i)] = change.slice(i + 1); } else throw new Error("write key=value to set a label, key- to remove it");
  return api(`/api/machines/${enc(m.id)}`, { method: "PATCH", body: { labels, resourceVersion: m.resourceVersion } });
}

// ---- machine detail -------------------------------------------------------------------

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(([, v]) => v !== undefined).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "–")]));
}

function progressBar(a) {
  const pct = Math.max(0, Math.min(100, a.percent || 0));
  const bar = h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": pct, "aria-label": `${a.name} progress` },
    h("span", { style: null }));
  bar.firstChild.style.width = `${pct}%`; // a CSSOM property, not an inline style attribute (CSP)
  return bar;
}

function actionRows(view) {
  return view.actions.map((a) => {
    const eta = a.bytesPerSecond && a.bytesTotal && a.bytesDone !== undefined && a.state === "Running"
      ? `${Math.ceil((a.bytesTotal - a.bytesDone) / a.bytesPerSecond)} s left` : "";
    return h("tr", { "data-action": a.name },
      h("td", {}, a.name), h("td", {}, state(a.state)),
      h("td", {}, progressBar(a), h("span", { class: "muted" }, `${a.percent || 0}%`)),
      h("td", { class: "num" }, a.bytesDone !== undefined ? `${bytes(a.bytesDone)} / ${bytes(a.bytesTotal)}` : "–"),
      h("td", { class: "num" }, a.bytesPerSecond ? `${bytes(a.bytesPerSecond)}/s` : "–", eta ? h("div", { class: "muted" }, eta) : null),
      h("td", {}, a.message || "", (a.logTail || []).length ? h("pre", { class: "log" }, a.logTail.join("\n")) : null));
  });
}

function machineView(name) {
  let machine = null;
  const root = h("div");
  async function refresh() {
    machine = await api(`/api/machines/${enc(name)}`);
    const [wf, log, history, conflicts] = await Promise.all([
      machine.workflowId ? api(`/api/workflows/${enc(machine.workflowId)}/progress`).catch(() => null) : null,
      api(`/api/machines/${enc(machine.id)}/agent-log`).catch(() => []),
      api(`/api/machines/${enc(machine.id)}/history`).catch(() => []),
      api(`/api/machines/${enc(machine.id)}/conflicts`).catch(() => []),
    ]);
    const hw = machine.hardware;
    const powerOut = h("p", { class: "error", role: "status" });
    const power = machine.power;
    // The BMC: configured here (the password is write-only: left empty, the stored one stays).
    const bmcOut = h("p", { class: "error", role: "alert" });
    const bmcType = h("select", { id: "bmc-type" }, ["ipmi", "redfish", "wol"].map((t) => h("option", { selected: power && power.type === t }, t)));
    const bmcAddr = h("input", { id: "bmc-address", placeholder: "10.0.0.5, https://bmc:443 or a broadcast" });
    const bmcUser = h("input", { id: "bmc-username", autocomplete: "off" });
    const bmcPass = h("input", { id: "bmc-password", type: "password", autocomplete: "new-password", placeholder: power ? "unchanged" : "" });
    const bmcForm = h("form", { class: "toolbar", onsubmit: async (e) => {
      e.preventDefault();
      const body = { type: bmcType.value };
      if (bmcAddr.value.trim()) body.address = bmcAddr.value.trim();
      if (bmcUser.value.trim()) body.username = bmcUser.value.trim();
      if (bmcPass.value) body.password = bmcPass.value;
      try {
        await api(`/api/machines/${enc(machine.id)}/bmc`, { method: "PUT", body });
        flash(`${machine.name}: BMC saved.`, true);
        refresh().catch(showError);
      } catch (err) { bmcOut.textContent = err.message; }
    } }, h("label", {}, "Type", bmcType), h("label", {}, "Address", bmcAddr), h("label", {}, "User", bmcUser),
      h("label", {}, "Password", bmcPass), h("button", { type: "submit", id: "bmc-save" }, power ? "Update BMC" : "Add BMC"),
      power ? h("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Remove ${machine.name}'s BMC? Power control ends.`)) return;
        try { await api(`/api/machines/${enc(machine.id)}/bmc`, { method: "DELETE" }); refresh().catch(showError); } catch (err) { bmcOut.textContent = err.message; }
      } }, "Remove BMC") : null);
    if (power) api(`/api/machines/${enc(machine.id)}/bmc`).then((b) => { bmcAddr.value = b.address || ""; bmcUser.value = b.username || ""; }).catch(() => {});
    // The reserved address.
    const ipIn = h("input", { id: "reserve-ip", value: machine.reservedIp || "", placeholder: "10.99.0.20", size: 15 });
    const ipOut = h("p", { class: "error", role: "alert" });
    const ipForm = h("form", { class: "toolbar", onsubmit: async (e) => {
      e.preventDefault();
      try {
        if (ipIn.value.trim()) await api(`/api/machines/${enc(machine.id)}/address`, { method: "PUT", body: { ip: ipIn.value.trim() } });
        else await api(`/api/machines/${enc(machine.id)}/address`, { method: "DELETE" });
        flash(ipIn.value.trim() ? `${machine.name}: ${ipIn.value.trim()} reserved.` : `${machine.name}: reservation released.`, true);
        refresh().catch(showError);
      } catch (err) { ipOut.textContent = err.message; }
    } }, h("label", {}, "Reserved IPv4 address (empty: release)", ipIn), h("button", { type: "submit", id: "reserve" }, "Save"));
    const powerCard = h("section", { class: "card", "aria-labelledby": "h-power" }, h("h2", { id: "h-power" }, "Power"),
      power ? facts([["State", state(power.state || "unknown")], ["BMC", power.type], ["Checked", ago(power.checkedAt)],
        ["Condition", power.condition || "ok"]]) : h("p", { class: "muted" }, "No BMC configured: power this machine by hand, or add its BMC below."),
      power ? h("div", { class: "actions" }, ["on", "off", "cycle", "reset", "status", "boot-pxe"].map((a) =>
        h("button", { type: "button", class: a === "off" ? "danger" : "secondary", "data-power": a, onclick: async (e) => {
          e.target.disabled = true;
          try {
            const r = await api(`/api/machines/${enc(machine.id)}/power`, { method: "POST", body: { action: a } });
            flash(`${machine.name}: ${a} — ${r.message}`, true);
          } catch (err) { powerOut.textContent = `${a}: ${err.message}`; }
          e.target.disabled = false;
          refresh().catch(showError);
        } }, a))) : null, powerOut, h("details", {}, h("summary", {}, power ? "BMC settings" : "Add a BMC"), bmcForm, bmcOut));
    const tmplSel = h("select", { id: "assign-template", "aria-label": "Template" });
    const assignOut = h("p", { class: "error", role: "alert" });
    api("/apis/dragonfly.computer/v1/templates").then((l) => {
      tmplSel.replaceChildren(...l.items.map((t) => h("option", {}, t.metadata.name)));
      if (!l.items.length) tmplSel.append(h("option", { value: "" }, "no templates yet"));
    }).catch(() => {});
    const wfCard = h("section", { class: "card", "aria-labelledby": "h-wf" }, h("h2", { id: "h-wf" }, "Provisioning"),
      wf ? [facts([["Workflow", wf.name], ["Template", wf.template], ["State", state(wf.state)], ["Attempt", wf.attempt], ["Error", wf.error]]),
        h("div", { class: "table-wrap" }, h("table", { id: "actions" },
          h("thead", {}, h("tr", {}, ["Action", "State", "Progress", "Bytes", "Rate", "Message"].map((c) => h("th", {}, c)))),
          h("tbody", {}, actionRows(wf))))] : h("p", { class: "muted" }, "No workflow: assign an OS to install one."),
      h("div", { class: "toolbar" }, h("label", {}, "Assign OS", tmplSel),
        h("button", { type: "button", id: "assign", onclick: async () => {
          if (!tmplSel.value) return;
          try {
            const w = await api(`/api/machines/${enc(machine.id)}/provision`, { method: "POST", body: { template: tmplSel.value, reimage: machine.state === "Ready" } });
            flash(`Workflow ${w.name} created. ${w.power}.`, true);
            assignOut.textContent = "";
          } catch (e) { assignOut.textContent = e.message; }
          refresh().catch(showError);
        } }, "Assign")), assignOut);
    root.replaceChildren(
      h("p", {}, h("a", { href: "#/machines" }, "← Machines")),
      h("h1", {}, machine.name, " ", state(machine.state)),
      machine.state === "Discovered" ? h("div", { class: "card" }, h("p", {}, "This machine waits for approval before it is registered (apid's auto_register is off)."),
        h("button", { type: "button", id: "approve", onclick: async () => {
          try { await api(`/api/machines/${enc(machine.id)}/approve`, { method: "POST" }); refresh().catch(showError); } catch (e) { showError(e); }
        } }, "Approve")) : null,
      h("div", { class: "grid2" },
        h("section", { class: "card", "aria-labelledby": "h-id" }, h("h2", { id: "h-id" }, "Identity"),
          facts([["Host name", machine.hostname || hw.hostname || "–"], ["ID", machine.id], ["MACs", hw.macs.join(", ")],
            ["Reserved IP", machine.reservedIp || "–"], ["Labels", labelsText(machine.labels) || "–"], ["OS", machine.osTemplate || "–"],
            ["Registered", `${machine.createdAt} (${ago(machine.createdAt)})`], ["Updated", ago(machine.updatedAt)]]), ipForm, ipOut),
        h("section", { class: "card", "aria-labelledby": "h-hw" }, h("h2", { id: "h-hw" }, "Hardware"),
          facts([["CPU", hw.cpu ? `${hw.cpu.model}, ${hw.cpu.cores} cores / ${hw.cpu.threads} threads` : "–"],
            ["Memory", bytes(hw.memoryBytes)], ["Firmware", hw.firmware || "–"],
            ["System", hw.system ? [hw.system.vendor, hw.system.product, hw.system.serial && `serial ${hw.system.serial}`].filter(Boolean).join(" ") : "–"],
            ["SMBIOS UUID", hw.smbiosUuid || "–"], ["Virtualization", hw.virtualization || "–"],
            ["BMC (reported)", hw.bmc ? `${hw.bmc.kind} ${hw.bmc.address}` : "–"]])),
        powerCard),
      wfCard,
      h("section", { class: "card", "aria-labelledby": "h-disks" }, h("h2", { id: "h-disks" }, "Disks and NICs"),
        h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, ["Disk", "Size", "Model", "Serial", "Rotational"].map((c) => h("th", {}, c)))),
          h("tbody", {}, hw.disks.map((d) => h("tr", {}, h("td", {}, d.name), h("td", {}, bytes(d.sizeBytes)), h("td", {}, d.model || "–"), h("td", {}, d.serial || "–"), h("td", {}, d.rotational === undefined ? "–" : d.rotational ? "yes" : "no")))))),
        h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, ["NIC", "MAC", "Link", "Speed", "Driver"].map((c) => h("th", {}, c)))),
          h("tbody", {}, hw.nics.map((n) => h("tr", {}, h("td", {}, n.name), h("td", {}, n.mac), h("td", {}, n.carrier === undefined ? "–" : n.carrier ? "up" : "down"), h("td", {}, n.speedMbps ? `${n.speedMbps} Mb/s` : "–"), h("td", {}, n.driver || "–"))))))),
      conflicts.length ? h("section", { class: "card", "aria-labelledby": "h-conflicts" }, h("h2", { id: "h-conflicts" }, "Identity conflicts"),
        h("p", { class: "muted" }, "Another machine's agent claimed this machine's identity; its registration was refused."),
        h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, ["Claimed", "Value", "By MAC", "Times", "Last"].map((c) => h("th", {}, c)))),
          h("tbody", {}, conflicts.map((c) => h("tr", {}, h("td", {}, c.kind), h("td", {}, c.claimed), h("td", {}, c.claimantMac), h("td", {}, c.count), h("td", {}, ago(c.lastSeen)))))))) : null,
      h("section", { class: "card", "aria-labelledby": "h-history" }, h("h2", { id: "h-history" }, "History"),
        h("div", { class: "table-wrap" }, h("table", { id: "history" }, h("thead", {}, h("tr", {}, ["When", "State", "From", "Why", "Workflow"].map((c) => h("th", {}, c)))),
          h("tbody", {}, [...history].reverse().map((e) => h("tr", {}, h("td", {}, `${e.at.slice(0, 19).replace("T", " ")} (${ago(e.at)})`),
            h("td", {}, state(e.to)), h("td", {}, e.from || "–"), h("td", {}, e.event), h("td", {}, e.workflowId || "–"))))))),
      h("section", { class: "card", "aria-labelledby": "h-log" }, h("h2", { id: "h-log" }, "Agent console"),
        h("pre", { class: "log", id: "agent-log", hidden: !log.length }, logText(log)),
        log.length ? null : h("p", { class: "muted", id: "agent-log-empty" }, "No console lines from this machine's agent yet.")),
      h("section", { class: "card" }, h("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Delete ${machine.name} from the inventory? It is discovered again if it boots.`)) return;
        try { await api(`/api/machines/${enc(machine.id)}`, { method: "DELETE" }); location.hash = "#/machines"; } catch (e) { showError(e); }
      } }, "Delete machine")));
    const pre = $("agent-log");
    if (pre) pre.scrollTop = pre.scrollHeight;
  }
  // The agent's console lines are not bus events: followed by reading them every 3 s (the
  // log alone, so a form being filled in is not redrawn).
  async function tick() {
    if (!machine) return;
    const pre = $("agent-log");
    if (!pre) return;
    const log = await api(`/api/machines/${enc(machine.id)}/agent-log`);
    const text = logText(log);
    if (text === pre.textContent) return;
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = text;
    pre.hidden = !log.length;
    const empty = $("agent-log-empty");
    if (empty) empty.hidden = log.length > 0;
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  }
  mount(root);
  return { refresh, tick, events: `machine=${enc(name)}` };
}

const logText = (log) => log.map((l) => `${l.receivedAt.slice(11, 19)}  ${l.line}`).join("\n");

// ---- workflows ------------------------------------------------------------------------

function workflowsView() {
  const body = h("tbody");
  async function refresh() {
    const list = await api("/apis/dragonfly.computer/v1/workflows");
    const names = new Map();
    try { for (const m of await allMachines()) names.set(m.id, m.name); } catch { /* names are a nicety */ }
    body.replaceChildren(...list.items.map((w) => {
      const s = w.status || {};
      const actions = s.actions || [];
      const cur = actions[s.currentAction || 0];
      const failed = actions.find((a) => a.state === "Failed");
      const mname = names.get(w.spec.hardwareRef) || w.spec.hardwareRef;
      return h("tr", {},
        h("td", {}, w.metadata.name),
        h("td", {}, h("a", { href: `#/machines/${enc(mname)}` }, mname)),
        h("td", {}, w.spec.templateRef), h("td", {}, state(s.state)),
        h("td", {}, cur ? [cur.name, " ", progressBar(cur)] : "–"),
        h("td", {}, failed ? `${failed.name}: ${failed.message || "failed"}` : "–"),
        h("td", {}, ago(w.metadata.creationTimestamp)),
        h("td", {}, h("div", { class: "actions" },
          ["Running", "Pending"].includes(s.state) ? h("button", { type: "button", class: "secondary", onclick: () => api(`/api/workflows/${enc(w.metadata.uid)}/cancel`, { method: "POST" }).then(refresh).catch(showError) }, "Cancel") : null,
          ["Failed", "TimedOut", "Cancelled"].includes(s.state) ? h("button", { type: "button", class: "secondary", onclick: () => api(`/api/workflows/${enc(w.metadata.uid)}/retry`, { method: "POST" }).then(refresh).catch(showError) }, "Retry") : null)));
    }));
    if (!list.items.length) body.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No workflows yet: assign an OS to a machine.")));
  }
  mount(h("h1", {}, "Workflows"), h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, ["Name", "Machine", "Template", "State", "Action", "Failure", "Created", "Operations"].map((c) => h("th", {}, c)))), body)));
  return { refresh, events: "types=workflow" };
}

// ---- templates ------------------------------------------------------------------------

const TEMPLATE_EXAMPLE = `apiVersion: dragonfly.computer/v1
kind: Template
metadata:
  name: my-template
spec:
  actions:
    - name: disk
      type: image2disk
      image: debian-12
      disk: /dev/vda
`;

function templatesView() {
  const body = h("tbody");
  async function refresh() {
    const list = await api("/apis/dragonfly.computer/v1/templates");
    body.replaceChildren(...list.items.map((t) => h("tr", {},
      h("td", {}, h("a", { href: `#/templates/${enc(t.metadata.name)}` }, t.metadata.name)),
      h("td", {}, t.spec.actions.map((a) => `${a.name} (${a.type})`).join(", ")),
      h("td", {}, t.metadata.resourceVersion), h("td", {}, ago(t.metadata.creationTimestamp)))));
    if (!list.items.length) body.replaceChildren(h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No templates yet: create one.")));
  }
  mount(h("div", { class: "toolbar" }, h("h1", { class: "grow" }, "Templates"), h("a", { href: "#/templates/new" }, "New template")),
    h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, ["Name", "Actions", "Version", "Created"].map((c) => h("th", {}, c)))), body)));
  return { refresh, events: null };
}

function templateEdit(name) {
  const editor = h("textarea", { id: "template-yaml", spellcheck: false, "aria-label": "Template (YAML)" });
  const out = h("p", { class: "error", role: "alert" });
  let loaded = false;
  async function refresh() {
    if (loaded) return;
    loaded = true;
    editor.value = name ? await api(`/apis/dragonfly.computer/v1/templates/${enc(name)}`, { accept: "application/yaml" }) : TEMPLATE_EXAMPLE;
  }
  async function save() {
    try {
      if (name) await api(`/apis/dragonfly.computer/v1/templates/${enc(name)}`, { method: "PUT", body: editor.value, type: "application/yaml" });
      else await api("/apis/dragonfly.computer/v1/templates", { method: "POST", body: editor.value, type: "application/yaml" });
      out.textContent = "";
      flash("Template saved.", true);
      location.hash = "#/templates";
    } catch (e) { out.textContent = e.message; }
  }
  mount(h("p", {}, h("a", { href: "#/templates" }, "← Templates")), h("h1", {}, name ? `Template ${name}` : "New template"),
    h("div", { class: "card" }, editor, out, h("div", { class: "actions" },
      h("button", { type: "button", id: "save-template", onclick: save }, "Save"),
      name ? h("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Delete template ${name}?`)) return;
        try { await api(`/apis/dragonfly.computer/v1/templates/${enc(name)}`, { method: "DELETE" }); location.hash = "#/templates"; } catch (e) { out.textContent = e.message; }
      } }, "Delete") : null)));
  return { refresh, events: null };
}

// ---- images ---------------------------------------------------------------------------

function imagesView() {
  const body = h("tbody");
  const out = h("p", { class: "error", role: "alert" });
  const nameIn = h("input", { id: "image-name", required: true, placeholder: "debian-12" });
  const srcIn = h("input", { id: "image-source", required: true, placeholder: "https://…/disk.raw.zst, or a file in the images directory", size: 40 });
  const compSel = h("select", { id: "image-compression" }, ["none", "gzip", "zstd", "xz", "bzip2"].map((c) => h("option", {}, c)));
  const shaIn = h("input", { id: "image-sha256", placeholder: "sha256 of the decompressed image (optional)", size: 30 });
  const pubIn = h("input", { type: "checkbox", id: "image-public" });
  async function refresh() {
    const list = await api("/apis/dragonfly.computer/v1/images");
    body.replaceChildren(...list.items.map((i) => h("tr", {},
      h("td", {}, i.metadata.name), h("td", {}, i.spec.url || i.spec.file), h("td", {}, state((i.status || {}).phase)),
      h("td", {}, bytes((i.status || {}).size)), h("td", {}, (i.status || {}).message || "–"), h("td", {}, i.spec.public ? "yes" : "no"),
      h("td", {}, h("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Delete image ${i.metadata.name}?`)) return;
        try { await api(`/apis/dragonfly.computer/v1/images/${enc(i.metadata.name)}`, { method: "DELETE" }); refresh().catch(showError); } catch (e) { out.textContent = e.message; }
      } }, "Delete")))));
    if (!list.items.length) body.replaceChildren(h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No images yet: add one by URL or by file name.")));
  }
  const form = h("form", { class: "card toolbar", onsubmit: async (e) => {
    e.preventDefault();
    const src = srcIn.value.trim();
    const spec = /^https?:\/\//.test(src) ? { url: src } : { file: src };
    spec.format = "raw";
    if (compSel.value !== "none") spec.compression = compSel.value;
    if (shaIn.value.trim()) spec.sha256 = shaIn.value.trim();
    if (pubIn.checked) spec.public = true;
    try {
      await api("/apis/dragonfly.computer/v1/images", { method: "POST", body: { apiVersion: "dragonfly.computer/v1", kind: "Image", metadata: { name: nameIn.value.trim() }, spec } });
      flash(`Image ${nameIn.value.trim()} added.`, true); out.textContent = ""; nameIn.value = ""; srcIn.value = ""; shaIn.value = "";
      refresh().catch(showError);
    } catch (err) { out.textContent = err.message; }
  } }, h("label", {}, "Name", nameIn), h("label", {}, "URL or file", srcIn), h("label", {}, "Compression", compSel),
    h("label", {}, "SHA-256", shaIn), h("label", { class: "inline" }, pubIn, "Public"), h("button", { type: "submit" }, "Add image"), out);
  mount(h("h1", {}, "Images"), form, h("div", { class: "table-wrap" }, h("table", { id: "images" },
    h("thead", {}, h("tr", {}, ["Name", "Source", "Phase", "Size", "Message", "Public", "Operations"].map((c) => h("th", {}, c)))), body)));
  return { refresh, tick: refresh, events: null };
}

// ---- tokens, users, account -----------------------------------------------------------

function tokensView() {
  const body = h("tbody");
  const shown = h("div");
  const nameIn = h("input", { id: "token-name", required: true, maxLength: 64 });
  const daysIn = h("input", { id: "token-days", type: "number", min: 1, max: 3650, placeholder: "never" });
  const out = h("p", { class: "error", role: "alert" });
  async function refresh() {
    const list = await api("/api/tokens");
    body.replaceChildren(...list.map((t) => h("tr", {}, h("td", {}, t.name), h("td", {}, ago(t.createdAt)), h("td", {}, t.expiresAt || "never"),
      h("td", {}, t.lastUsed ? ago(t.lastUsed) : "never"),
      h("td", {}, h("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Revoke token ${t.name}? Scripts using it stop working.`)) return;
        await api(`/api/tokens/${enc(t.id)}`, { method: "DELETE" }).catch(showError); refresh().catch(showError);
      } }, "Revoke")))));
    if (!list.length) body.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "empty" }, "No API tokens.")));
  }
  const form = h("form", { class: "card toolbar", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const t = await api("/api/tokens", { method: "POST", body: { name: nameIn.value, expiresInDays: daysIn.value ? Number(daysIn.value) : null } });
      shown.replaceChildren(h("div", { class: "card" }, h("p", {}, `Token ${t.name}: copy it now, it is shown only once.`), h("p", { class: "secret", id: "new-token" }, t.token)));
      out.textContent = ""; nameIn.value = ""; refresh().catch(showError);
    } catch (err) { out.textContent = err.message; }
  } }, h("label", {}, "Name", nameIn), h("label", {}, "Expires in days", daysIn), h("button", { type: "submit" }, "Create token"), out);
  mount(h("h1", {}, "API tokens"), form, shown,
    h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, ["Name", "Created", "Expires", "Last used", "Operations"].map((c) => h("th", {}, c)))), body)));
  return { refresh, events: null };
}

function usersView() {
  const body = h("tbody");
  const out = h("p", { class: "error", role: "alert" });
  const userIn = h("input", { id: "new-username", required: true, autocomplete: "off" });
  const passIn = h("input", { id: "new-password", type: "password", required: true, minLength: 12, autocomplete: "new-password" });
  const adminIn = h("input", { type: "checkbox", id: "new-admin" });
  async function refresh() {
    if (!me.isAdmin) { body.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "empty" }, "Only administrators manage users."))); return; }
    const list = await api("/api/users");
    const act = (what, fn) => async () => {
      try { await fn(); flash(what, true); refresh().catch(showError); } catch (e) { out.textContent = e.message; }
    };
    body.replaceChildren(...list.map((u) => h("tr", {}, h("td", {}, u.username), h("td", {}, u.isAdmin ? "administrator" : "operator"),
      h("td", {}, u.disabled ? "disabled" : "active"), h("td", {}, ago(u.createdAt)),
      h("td", {}, u.username === me.username ? h("span", { class: "muted" }, "you") : h("div", { class: "actions" },
        h("button", { type: "button", class: "secondary", onclick: act(`${u.username} ${u.disabled ? "enabled" : "disabled"}.`, () => api(`/api/users/${u.id}`, { method: "PATCH", body: { disabled: !u.disabled } })) }, u.disabled ? "Enable" : "Disable"),
        h("button", { type: "button", class: "secondary", onclick: act(`${u.username} is now ${u.isAdmin ? "an operator" : "an administrator"}.`, () => api(`/api/users/${u.id}`, { method: "PATCH", body: { isAdmin: !u.isAdmin } })) }, u.isAdmin ? "Make operator" : "Make administrator"),
        h("button", { type: "button", class: "danger", onclick: act(`${u.username}: sessions and tokens revoked.`, () => api(`/api/users/${u.id}/revoke`, { method: "POST" })) }, "Revoke sessions"))))));
  }
  const form = h("form", { class: "card toolbar", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await api("/api/users", { method: "POST", body: { username: userIn.value, password: passIn.value, isAdmin: adminIn.checked } });
      flash(`User ${userIn.value} created.`, true); out.textContent = ""; userIn.value = ""; passIn.value = ""; refresh().catch(showError);
    } catch (err) { out.textContent = err.message; }
  } }, h("label", {}, "Username", userIn), h("label", {}, "Password (12+ characters)", passIn), h("label", { class: "inline" }, adminIn, "Administrator"), h("button", { type: "submit" }, "Create user"), out);
  mount(h("h1", {}, "Users"), me.isAdmin ? form : null,
    h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, ["Username", "Role", "Status", "Created", "Operations"].map((c) => h("th", {}, c)))), body)));
  return { refresh, events: null };
}

function accountView() {
  const cur = h("input", { type: "password", required: true, autocomplete: "current-password" });
  const next = h("input", { type: "password", required: true, minLength: 12, autocomplete: "new-password" });
  const out = h("p", { class: "error", role: "alert" });
  mount(h("h1", {}, `Account: ${me.username}`), h("form", { class: "card login", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await api("/api/auth/password", { method: "POST", body: { currentPassword: cur.value, newPassword: next.value } });
      flash("Password changed; your other sessions were signed out.", true); cur.value = ""; next.value = ""; out.textContent = "";
    } catch (err) { out.textContent = err.message; }
  } }, h("h2", {}, "Change password"), h("label", {}, "Current password", cur), h("label", {}, "New password (12+ characters)", next), h("button", { type: "submit" }, "Change password"), out));
  return { refresh: async () => {}, events: null };
}

// ---- session --------------------------------------------------------------------------

function showLogin() {
  me = null;
  clearInterval(tickTimer);
  follow(null);
  $("login").hidden = false;
  $("nav").hidden = true;
  $("who").hidden = true;
  $("view").replaceChildren();
  $("login").querySelector("input").focus();
}

async function showApp() {
  me = await api("/api/auth/me");
  $("username").textContent = me.username;
  $("who").hidden = false;
  $("nav").hidden = false;
  $("login").hidden = true;
  await route();
}

$("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  try {
    await api("/api/auth/login", { method: "POST", body: { username: form.get("username"), password: form.get("password") } });
    $("login-error").textContent = "";
    ev.target.reset();
    await showApp();
  } catch (e) {
    $("login-error").textContent = e.status === 401 ? "Wrong user name or password." : e.message;
  }
});

$("logout").addEventListener("click", async () => {
  await fetch("/api/auth/logout", { method: "POST", credentials: "same-origin" });
  showLogin();
});

window.addEventListener("hashchange", () => route());
showApp().catch(() => showLogin());
