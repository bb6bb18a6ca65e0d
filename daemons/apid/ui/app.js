// Dragonfly's web UI: a thin client of the JSON API. The session cookie is HttpOnly, so this
// script never sees a credential; it only learns whether /api/auth/me answers 200 or 401.
"use strict";

const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const res = await fetch(path, {
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    ...options,
  });
  if (res.status === 401) { showLogin(); throw new Error("unauthorized"); }
  return res;
}

function showLogin() {
  $("login").hidden = false;
  $("machines").hidden = true;
  $("who").hidden = true;
}

function text(el, value) { el.textContent = value ?? ""; return el; }

function gib(bytes) { return bytes ? (bytes / 2 ** 30).toFixed(1) + " GiB" : ""; }

async function loadMachines() {
  const state = $("state-filter").value;
  const res = await api("/api/machines?limit=500" + (state ? "&state=" + encodeURIComponent(state) : ""));
  const page = await res.json();
  const rows = $("rows");
  rows.replaceChildren();
  for (const m of page.items) {
    const tr = document.createElement("tr");
    const hw = m.hardware;
    const cells = [
      m.name,
      null,
      hw.macs.join(" "),
      hw.cpu ? `${hw.cpu.model} (${hw.cpu.cores}c/${hw.cpu.threads}t)` : "",
      gib(hw.memoryBytes),
      hw.disks.map((d) => `${d.name} ${gib(d.sizeBytes)}`).join(", "),
      Object.entries(m.labels).map(([k, v]) => `${k}=${v}`).join(" "),
    ];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      if (i === 1) td.append(text(Object.assign(document.createElement("span"), { className: "state" }), m.state));
      else text(td, c);
      tr.append(td);
    });
    rows.append(tr);
  }
  text($("count"), `${page.items.length} machine${page.items.length === 1 ? "" : "s"}`);
}

async function showApp() {
  const res = await api("/api/auth/me");
  const me = await res.json();
  text($("username"), me.username);
  $("who").hidden = false;
  $("login").hidden = true;
  $("machines").hidden = false;
  await loadMachines();
}

$("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const res = await fetch("/api/auth/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: form.get("username"), password: form.get("password") }),
  });
  if (res.ok) { text($("login-error"), ""); await showApp(); }
  else { const body = await res.json().catch(() => ({})); text($("login-error"), body.message || "Sign-in failed"); }
});

$("logout").addEventListener("click", async () => {
  await fetch("/api/auth/logout", { method: "POST", credentials: "same-origin" });
  showLogin();
});

$("state-filter").addEventListener("change", () => loadMachines().catch(() => {}));

showApp().catch(() => {});
setInterval(() => { if (!$("machines").hidden) loadMachines().catch(() => {}); }, 5000);
