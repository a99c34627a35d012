// weir's dashboard. It reads the same API the CLI reads, every 5 s, and
// draws the chart as SVG. Every value goes into the page as text (never as
// markup): event values and titles come from outside.
"use strict";

const REFRESH_MS = 5000;
const WRITE_HEADER = "x-weir-write";
const SVG = "http://www.w3.org/2000/svg";
const state = { role: null, selected: null, timer: null };

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.append(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function percent(ratio) {
  return (ratio * 100).toFixed(2) + " %";
}

function number(n) {
  return Number(n).toLocaleString("en-US");
}

function say(text, bad) {
  const message = $("message");
  message.textContent = text;
  message.className = bad ? "message bad" : "message";
  message.hidden = !text;
}

class Unauthorized extends Error {}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options));
  if (response.status === 401) throw new Unauthorized();
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.status + " " + response.statusText;
    throw new Error(detail);
  }
  return body;
}

function showLogin() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  $("app").hidden = true;
  $("logout").hidden = true;
  $("role").hidden = true;
  $("login").hidden = false;
  $("login-failed").hidden = !new URLSearchParams(location.search).has("login");
}

// A token link (`/#token=...`): the fragment never reaches the server; it is
// posted like the form, and taken off the address bar first. True when it was one.
// Someone else's link must not swap a session that is open: ask first.
function tokenLink() {
  if (!location.hash.startsWith("#token=")) return false;
  const raw = location.hash.slice(7);
  history.replaceState(null, "", location.pathname);
  let token;
  try {
    token = decodeURIComponent(raw);
  } catch (err) {
    token = raw;
  }
  if (state.role && !confirm("Log in again with the token from this link?")) return false;
  $("token").value = token;
  $("login-form").submit();
  return true;
}

async function start() {
  // Following a token link while the page is open only changes the fragment.
  window.addEventListener("hashchange", tokenLink);
  if (tokenLink()) return;
  try {
    const who = await api("/api/whoami");
    state.role = who.role;
  } catch (err) {
    if (err instanceof Unauthorized) return showLogin();
    throw err;
  }
  if (location.search) history.replaceState(null, "", location.pathname);
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  $("role").textContent = state.role;
  $("role").hidden = false;
  document.querySelectorAll(".admin-only").forEach((n) => (n.hidden = state.role !== "admin"));
  $("range").addEventListener("change", () => refresh());
  await refresh();
  state.timer = setInterval(refresh, REFRESH_MS);
}

async function refresh() {
  try {
    // /readyz answers 503 with the same body while something is down.
    const readiness = fetch("/readyz", { credentials: "same-origin" })
      .then((r) => r.json())
      .catch(() => null);
    const [ready, pipeline, scenarios, plugins] = await Promise.all([
      readiness,
      api("/api/pipeline").catch((err) => (err instanceof Unauthorized ? Promise.reject(err) : null)),
      api("/api/scenarios"),
      api("/api/plugins"),
    ]);
    if (pipeline) drawHealth(pipeline, ready);
    else drawProblems(null, ready);
    await drawScenarios(scenarios.scenarios);
    drawPlugins(plugins.plugins);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    if (err instanceof Unauthorized) return showLogin();
    say("Could not refresh: " + err.message, true);
  }
}

function drawHealth(p, ready) {
  $("eps").textContent = number(p.events_per_second);
  $("events").textContent = number(p.events_total);
  $("outputs").textContent = number(p.outputs_total);
  $("dead").textContent = number(p.dead_letters_total);
  $("generation").textContent = p.generation;
  const lagTotal = p.lag.reduce((sum, l) => sum + l.lag, 0);
  $("lag-total").textContent = number(lagTotal);
  fill($("lag").tBodies[0], p.lag.map((l) => row([l.topic, l.partition, number(l.lag)])));

  drawProblems(p, ready);

  const reasons = Object.entries(p.dead_letters_by_reason).map(([reason, n]) => el("li", `${reason}: ${number(n)}`));
  if (reasons.length === 0) reasons.push(el("li", "none", "ok"));
  $("reasons").replaceChildren(...reasons);
  fill($("latest").tBodies[0], p.recent_dead_letters.slice(0, 10).map((d) => {
    const preview = el("td", d.preview, "preview");
    preview.title = d.error;
    return row([
      new Date(d.at).toLocaleTimeString(),
      d.reason,
      d.scenario ?? "–",
      d.plugin ?? "–",
      `${d.topic}/${d.partition}@${d.offset}`,
      preview,
    ]);
  }));
}

// Dependencies that are not up (from /readyz), then the pipeline's own
// problems when it runs (`p` is null while it starts).
function drawProblems(p, ready) {
  const problems = [];
  for (const d of ready?.dependencies ?? []) {
    if (d.state === "up") continue;
    const since = new Date(d.since).toLocaleTimeString();
    problems.push(el("li", `${d.name} at ${d.target} ${d.state} since ${since}: ${d.reason ?? "not reached yet"}`, "bad"));
  }
  if (!p) {
    if (ready?.pipeline?.state) problems.push(el("li", `pipeline ${ready.pipeline.state}`, "muted"));
    $("problems").replaceChildren(...problems);
    return;
  }
  for (const s of p.failing_sinks) problems.push(el("li", `sink ${s.sink} failing for ${s.seconds} s: ${s.error}`, "bad"));
  for (const q of p.quarantined) problems.push(el("li", `scenario ${q.scenario} quarantined (${q.plugin}) until ${q.until}: ${q.reason}`, "bad"));
  for (const a of p.alerts_firing) problems.push(el("li", `alert ${a.rule} firing: ${a.summary}`, "bad"));
  if (p.failed_cycles_total > 0) problems.push(el("li", `${number(p.failed_cycles_total)} batch cycles failed and were retried`, "muted"));
  if (problems.length === 0) problems.push(el("li", "none", "ok"));
  $("problems").replaceChildren(...problems);
}

async function drawScenarios(list) {
  const minutes = Number($("range").value);
  const to = Date.now();
  const from = to - minutes * 60000;
  const stats = await Promise.all(
    list.map((s) =>
      api(`/api/scenarios/${encodeURIComponent(s.scenario_id)}/stats?from=${from}&to=${to}`).catch((err) =>
        err instanceof Unauthorized ? Promise.reject(err) : null,
      ),
    ),
  );
  if (!state.selected || !list.some((s) => s.scenario_id === state.selected)) {
    state.selected = list.length ? list[0].scenario_id : null;
  }
  const rows = list.map((s, i) => {
    const st = stats[i];
    const ratio = el("td", st ? percent(st.success_ratio) : "–", "ratio");
    if (st) {
      ratio.dataset.ratio = st.success_ratio;
      ratio.dataset.total = st.total;
    }
    // A shadow candidate's agreement beside the plugin; the latest
    // difference on hover.
    const plugin = el("td", s.plugin);
    const shadow = st && st.shadow;
    if (shadow) {
      const line = `shadow ${shadow.candidate}: ${percent(shadow.agreement)} alike, ${number(shadow.differ)} differ, ${number(shadow.candidate_failed)} failed`;
      plugin.append(el("div", shadow.error ? `${line}; ${shadow.error}` : line, shadow.differ > 0 || shadow.error ? "bad" : "muted"));
      const last = shadow.samples[shadow.samples.length - 1];
      if (last) plugin.title = `offset ${last.offset}: ${JSON.stringify(last.current)} / ${JSON.stringify(last.candidate)}`;
    }
    // A canary's failure rate against the plugin's, and its verdict.
    const canary = st && st.canary;
    if (canary) {
      const line = `canary ${canary.candidate} (${percent(canary.share)}): ${percent(canary.candidate_failure_rate)} failed of ${number(canary.candidate_events)}, against ${percent(canary.current_failure_rate)}`;
      const verdict = canary.verdict ? `; ${canary.verdict.replace("_", " ")}` : "";
      plugin.append(el("div", line + verdict, canary.verdict === "rolled_back" ? "bad" : "muted"));
      if (canary.reason) plugin.title = canary.reason;
    }
    const tr = row([
      s.scenario_id,
      (s.document && s.document.title) || "",
      plugin,
      ratio,
      st ? number(st.total) : "–",
      st ? number(st.matched) : "–",
      st ? number(st.errors) : "–",
    ]);
    tr.dataset.scenario = s.scenario_id;
    if (s.scenario_id === state.selected) tr.className = "selected";
    tr.addEventListener("click", () => {
      state.selected = s.scenario_id;
      refresh();
    });
    return tr;
  });
  fill($("scenarios").tBodies[0], rows);
  const index = list.findIndex((s) => s.scenario_id === state.selected);
  $("chart-scenario").textContent = state.selected ?? "";
  drawChart(index >= 0 ? stats[index] : null, from, to);
  // Not awaited: a slow archive must not hold up the live figures.
  drawDaily(state.selected).catch(() => {});
}

// The chosen scenario's daily history: what `weir report` wrote into the
// archive. It changes once a day at most, so it is read once a minute.
const DAILY_EVERY_MS = 60000;
async function drawDaily(id) {
  $("daily-scenario").textContent = id ?? "";
  const shown = state.daily && state.daily.id === id ? state.daily : null;
  if (!shown) {
    // Another scenario's rows never stand under this one's heading.
    fill($("daily").tBodies[0], []);
    $("daily-note").textContent = "";
  }
  if (!id) return;
  if (shown && Date.now() - shown.at < DAILY_EVERY_MS) return draw(shown);
  if (state.dailyLoading === id) return;
  state.dailyLoading = id;
  let body = null;
  let note = "";
  try {
    body = await api(`/api/scenarios/${encodeURIComponent(id)}/daily`);
  } catch (err) {
    note = `no daily history: ${err.message}`;
  } finally {
    if (state.dailyLoading === id) state.dailyLoading = null;
  }
  state.daily = { id, at: Date.now(), body, note };
  if (state.selected === id) draw(state.daily);

  function draw({ body, note }) {
    const days = body ? body.days.slice().reverse() : [];
    $("daily-note").textContent = note || (days.length
      ? `from ${body.source}, newest first`
      : `no daily reports yet: run \`weir report\` (it writes them to ${body.source})`);
    fill($("daily").tBodies[0], days.map((d) => {
      const ratio = el("td", percent(d.success_ratio), "ratio");
      ratio.dataset.ratio = d.success_ratio;
      return row([d.day, ratio, number(d.events), number(d.matched), number(d.dead_letters)]);
    }));
  }
}

function drawChart(stats, from, to) {
  const chart = $("chart");
  const [w, h, left, right, top, bottom] = [800, 260, 44, 56, 10, 22];
  const nodes = [];
  const x = (t) => left + ((t - from) / (to - from)) * (w - left - right);
  const plotH = h - top - bottom;
  nodes.push(svg("line", { class: "axis", x1: left, y1: h - bottom, x2: w - right, y2: h - bottom }));
  for (const r of [0, 0.5, 1]) {
    const y = top + (1 - r) * plotH;
    nodes.push(svg("line", { class: "axis", x1: left, y1: y, x2: w - right, y2: y }));
    const label = svg("text", { x: 4, y: y + 4 });
    label.textContent = r * 100 + " %";
    nodes.push(label);
  }
  const points = stats ? stats.minutes.map((m) => ({ t: Date.parse(m.minute), ...m })) : [];
  const maxTotal = Math.max(1, ...points.map((p) => p.total));
  const barW = Math.max(1, ((w - left - right) * 60000) / (to - from) - 1);
  for (const p of points) {
    const bh = (p.total / maxTotal) * plotH;
    nodes.push(svg("rect", { class: "bar", x: x(p.t), y: h - bottom - bh, width: barW, height: bh }));
  }
  const scale = svg("text", { x: w - 2, y: top + 10, "text-anchor": "end" });
  scale.textContent = number(maxTotal) + "/min";
  nodes.push(scale);
  if (points.length) {
    const coords = points.map((p) => [x(p.t) + barW / 2, top + (1 - p.success_ratio) * plotH]);
    nodes.push(svg("polyline", { class: "line", points: coords.map((c) => c.join(",")).join(" ") }));
    points.forEach((p, i) => {
      const dot = svg("circle", { class: "pt", cx: coords[i][0], cy: coords[i][1], r: 3 });
      const tip = svg("title", {});
      tip.textContent = `${p.minute}: ${percent(p.success_ratio)} of ${number(p.total)}`;
      dot.append(tip);
      dot.dataset.ratio = p.success_ratio;
      nodes.push(dot);
    });
  }
  for (const [t, anchor] of [[from, "start"], [to, "end"]]) {
    const label = svg("text", { x: x(t), y: h - 6, "text-anchor": anchor });
    label.textContent = new Date(t).toLocaleString();
    nodes.push(label);
  }
  chart.replaceChildren(...nodes);
}

function drawPlugins(list) {
  const admin = state.role === "admin";
  fill($("plugins").tBodies[0], list.map((p) => {
    const current = p.current || {};
    const cells = [p.name, `v${p.current_version}`, current.kind || "", current.description || ""];
    const tr = row(cells);
    tr.dataset.plugin = p.name;
    if (admin) tr.append(rollbackCell(p));
    return tr;
  }));
}

function rollbackCell(plugin) {
  const td = el("td");
  const select = el("select");
  select.className = "rollback-version";
  for (let v = plugin.latest_version; v >= 1; v--) {
    if (v === plugin.current_version) continue;
    const option = el("option", `v${v}`);
    option.value = v;
    select.append(option);
  }
  const button = el("button", "Roll back", "rollback");
  button.type = "button";
  button.disabled = select.options.length === 0;
  // The refresh redraws the table every 5 s: keep the choice meanwhile.
  const kept = state["rollback:" + plugin.name];
  if (kept) select.value = kept;
  select.addEventListener("change", () => (state["rollback:" + plugin.name] = select.value));
  button.addEventListener("click", async () => {
    const to = Number(select.value);
    if (!to) return;
    button.disabled = true;
    try {
      const version = await api(`/api/plugins/${encodeURIComponent(plugin.name)}/rollback`, {
        method: "POST",
        headers: { "content-type": "application/json", [WRITE_HEADER]: "1" },
        body: JSON.stringify({ to }),
      });
      delete state["rollback:" + plugin.name];
      say(`${plugin.name} is now at v${version.version}; scenarios use it from their next batch.`);
    } catch (err) {
      say(`Rollback of ${plugin.name} failed: ${err.message}`, true);
    }
    await refresh();
  });
  td.append(select, button);
  return td;
}

document.addEventListener("DOMContentLoaded", () => {
  start().catch((err) => say("The dashboard could not start: " + err.message, true));
});
