// Drover's web UI: the overview from /api/v1/overview, redrawn on every cluster event
// (/api/v1/events, server-sent events read through fetch so that the token goes in a
// header), and the actions the token's role allows, each confirmed first.
"use strict";

const PAGE = 50;
const state = { token: null, overview: null, pages: { nodes: 0, workloads: 0 }, following: false };

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// What went wrong, by source: reading the cluster ("read", cleared by the next good read)
// and the last action ("action", cleared by the next good action), shown together.
const errors = { read: "", action: "" };

function showError(text, source = "action") {
  errors[source] = text;
  const shown = [errors.action, errors.read].filter(Boolean).join(" — ");
  const box = $("error");
  box.textContent = shown;
  box.hidden = !shown;
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  const answer = await fetch(path, Object.assign({}, options, { headers }));
  if (!answer.ok) {
    let why = answer.status + " " + answer.statusText;
    try { why = (await answer.json()).error || why; } catch (_) { /* not JSON */ }
    throw new Error(why);
  }
  return answer;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function bar(used, total) {
  const width = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  const span = el("span");
  span.style.width = width.toFixed(1) + "%";
  return el("div", { class: "bar", title: `${used} of ${total}` }, span);
}

function pager(list, count) {
  const nav = document.querySelector(`.pager[data-list="${list}"]`);
  nav.replaceChildren();
  const pages = Math.ceil(count / PAGE);
  if (pages <= 1) return;
  state.pages[list] = Math.min(state.pages[list], pages - 1);
  for (let p = 0; p < pages; p += 1) {
    const button = el("button", { type: "button" }, p + 1);
    if (p === state.pages[list]) button.disabled = true;
    button.addEventListener("click", () => { state.pages[list] = p; render(); });
    nav.append(button);
  }
}

function page(list, items) {
  pager(list, items.length);
  const start = state.pages[list] * PAGE;
  return items.slice(start, start + PAGE);
}

function render() {
  const view = state.overview;
  if (!view) return;
  const replicas = view.nodes.reduce((n, node) => n + node.replicas.length, 0);
  $("summary").textContent =
    `${view.nodes.length} nodes, ${view.workloads.length} workloads, ${view.services.length} services, ${replicas} replicas`;

  $("nodes").replaceChildren(...page("nodes", view.nodes).map((node) => {
    const flags = [node.health, node.cordoned ? "cordoned" : "", node.draining ? "draining" : ""]
      .filter(Boolean).join(", ");
    const chips = node.replicas.map((r) => {
      const chip = el("button", { type: "button", class: "chip " + r.state, "data-replica": r.id, title: `${r.workload} revision ${r.revision}: ${r.state}` }, r.id);
      chip.addEventListener("click", () => showReplica(r.id));
      return chip;
    });
    const actions = (node.cordoned ? ["uncordon"] : ["cordon"]).concat(node.draining ? [] : ["drain"]).map((action) => {
      const button = el("button", { type: "button", "data-node-action": `${node.id}/${action}` }, action);
      button.addEventListener("click", () => nodeAction(node.id, action));
      return button;
    });
    return el("div", { class: "node " + node.health, "data-node": node.id },
      el("h3", {}, node.id, " ", el("small", {}, node.address)),
      el("div", {}, flags),
      el("div", {}, `CPU ${node.allocated.cpu_millis}m of ${node.capacity.cpu_millis}m`),
      bar(node.allocated.cpu_millis, node.capacity.cpu_millis),
      el("div", {}, `memory ${bytes(node.allocated.memory_bytes)} of ${bytes(node.capacity.memory_bytes)}`),
      bar(node.allocated.memory_bytes, node.capacity.memory_bytes),
      el("div", { class: "chips" }, ...chips),
      el("div", { class: "actions" }, ...actions));
  }));

  $("workloads").replaceChildren(...page("workloads", view.workloads).map((w) => {
    const input = el("input", { class: "replicas", type: "number", min: "0", value: w.desired, "aria-label": `replicas of ${w.name}` });
    const button = el("button", { type: "button", "data-scale": w.name }, "Scale");
    button.addEventListener("click", () => scale(w.name, Number(input.value)));
    const weights = w.weights.map((x) => `${x.revision}=${x.weight}`).join(" ");
    const weightsCell = el("td", {}, weights || "—");
    if (w.weights.length > 1) {
      const field = el("input", { class: "weights", value: weights, "aria-label": `weights of ${w.name}` });
      const set = el("button", { type: "button", "data-weights": w.name }, "Set");
      set.addEventListener("click", () => setWeights(w.name, field.value));
      weightsCell.replaceChildren(field, " ", set);
    }
    const rollout = w.rollout
      ? `${w.rollout.from_revision} → ${w.rollout.revision}: ${w.rollout.updated} updated, ${w.rollout.ready} ready of ${w.rollout.desired}` +
        (w.rollout.steps ? `, step ${w.rollout.step}/${w.rollout.steps}` : "") + (w.rollout.paused ? " (paused)" : "") +
        (w.rollout.message ? ` — ${w.rollout.message}` : "")
      : "—";
    return el("tr", { "data-workload": w.name },
      el("td", {}, w.name),
      el("td", {}, w.image),
      el("td", {}, w.revision),
      el("td", { class: "ready" }, `${w.healthy} / ${w.desired}`),
      el("td", { class: "rollout" }, rollout),
      weightsCell,
      el("td", {}, w.services.join(", ")),
      el("td", {}, input, " ", button));
  }));

  $("services").replaceChildren(...view.services.map((s) =>
    el("tr", { "data-service": s.name },
      el("td", {}, s.name),
      el("td", {}, s.cluster_ip || "None (headless)"),
      el("td", {}, s.workloads.join(", ")),
      el("td", {}, `${s.healthy} / ${s.endpoints}`))));
}

async function refresh() {
  try {
    state.overview = await (await api("/api/v1/overview")).json();
    showError("", "read");
    render();
  } catch (e) {
    showError("Reading the cluster failed: " + e.message, "read");
  }
}

let pending = null;
function refreshSoon() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; refresh(); }, 150);
}

function confirmed(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

// Confirms `question`, then posts `body` to `path`; shows the overview it answers, or why not.
async function act(question, what, path, body) {
  if (!(await confirmed(question))) return;
  try {
    const answer = await api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    state.overview = await answer.json();
    showError("");
    render();
  } catch (e) {
    showError(`${what} refused: ${e.message}`);
  }
}

async function scale(name, replicas) {
  if (!Number.isInteger(replicas) || replicas < 0) {
    showError(`Scale ${name}: the replica count must be a whole number, 0 or more`);
    return;
  }
  await act(`Scale ${name} to ${replicas} replicas?`, `Scale ${name}`,
    `/api/v1/workloads/${encodeURIComponent(name)}/scale`, { replicas });
}

async function setWeights(name, text) {
  const weights = {};
  for (const pair of text.trim().split(/\s+/)) {
    const [revision, weight] = pair.split("=");
    if (!/^\d+$/.test(revision || "") || !/^\d+$/.test(weight || "")) {
      showError(`Weights of ${name}: write REVISION=WEIGHT pairs, e.g. 1=90 2=10 (not ${JSON.stringify(pair)})`);
      return;
    }
    weights[revision] = Number(weight);
  }
  await act(`Set the weights of ${name} to ${text.trim()}?`, `Weights of ${name}`,
    `/api/v1/workloads/${encodeURIComponent(name)}/weights`, { weights });
}

async function nodeAction(node, action) {
  await act(`${action[0].toUpperCase() + action.slice(1)} node ${node}?`, `${action} ${node}`,
    `/api/v1/nodes/${encodeURIComponent(node)}/${action}`);
}

async function showReplica(id) {
  try {
    const replica = await (await api(`/api/v1/allocations/${encodeURIComponent(id)}`)).json();
    $("detail-id").textContent = replica.id;
    const fields = ["workload", "revision", "node", "state", "desired", "restarts", "container_id", "message"];
    $("detail-fields").replaceChildren(...fields.flatMap((f) => [el("dt", {}, f), el("dd", {}, String(replica[f] ?? ""))]));
    $("detail-log").textContent = replica.log.join("\n");
    $("detail").hidden = false;
  } catch (e) {
    showError(`Reading replica ${id} failed: ${e.message}`);
  }
}

function addEvent(event) {
  const list = $("events");
  list.prepend(el("li", {}, `${event.seq} ${event.kind} ${event.subject}: ${event.message}`));
  while (list.children.length > 200) list.lastChild.remove();
}

// Follows the event stream, reconnecting after a pause when it ends.
async function follow() {
  for (;;) {
    try {
      const answer = await api("/api/v1/events", { headers: { Accept: "text/event-stream" } });
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      state.following = true;
      $("live").textContent = "live";
      $("live").classList.add("on");
      refreshSoon();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (block.includes("event: cluster") && data) addEvent(JSON.parse(data));
          if (data) refreshSoon();
        }
      }
    } catch (e) {
      showError("Following the cluster's events failed: " + e.message, "read");
    }
    state.following = false;
    $("live").textContent = "reconnecting";
    $("live").classList.remove("on");
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function start() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("drover-token", fromHash);
    history.replaceState(null, "", location.pathname);
  }
  state.token = sessionStorage.getItem("drover-token");
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("drover-token", state.token);
    $("token").value = "";
    refresh();
  });
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  refresh();
  follow();
}

start();
