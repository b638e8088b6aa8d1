// The insession demo shop: plain browser JavaScript, no build step, no external assets.
// Every action posts a real event to /v1/events; every row is a real /v1/recommendations call.
"use strict";

const SURFACES = ["home", "product_page", "cart"];
const state = {
  user: null,
  lastItem: null, // the item whose page the shopper is on (product_page context)
  cart: [],
  rows: {}, // surface -> {requestId, ids}
  items: new Map(), // item_id -> catalog item
  categories: [],
};

// -- small helpers ------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k === "onclick") node.addEventListener("click", v);
    else node[k] = v;
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(method, path, body) {
  const started = performance.now();
  let response;
  // A busy server answers 503 with Retry-After (nothing was done): wait as told and try again.
  for (let attempt = 0; ; attempt++) {
    response = await fetch(path, {
      method,
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    const retryAfter = response.headers.get("Retry-After");
    if (response.status !== 503 || retryAfter === null || attempt >= 3) break;
    await new Promise((resolve) => setTimeout(resolve, Math.min(Number(retryAfter) || 1, 5) * 1000));
  }
  const data = await response.json().catch(() => ({}));
  const ms = performance.now() - started;
  if (!response.ok) {
    const message = data.error || `${response.status} ${response.statusText}`;
    showError(`${method} ${path}: ${message}`);
    throw new Error(message);
  }
  return { data, ms };
}

function showError(text) {
  const node = document.getElementById("status-error");
  node.textContent = text;
  node.hidden = !text;
}

// A placeholder picture drawn here: the category's colour, the item's initials.
function hue(text) {
  let h = 0;
  for (const c of text || "?") h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}

function picture(item) {
  const h = hue(item.category);
  const initials = (item.name || item.item_id).split(/\s+/).slice(0, 2).map((w) => w[0] || "").join("").toUpperCase();
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="120" height="80" viewBox="0 0 120 80">` +
    `<rect width="120" height="80" fill="hsl(${h},55%,78%)"/>` +
    `<circle cx="92" cy="22" r="14" fill="hsl(${h},55%,62%)"/>` +
    `<text x="12" y="56" font-family="sans-serif" font-size="28" fill="hsl(${h},45%,28%)">${initials.replace(/[^A-Z0-9]/g, "")}</text></svg>`;
  return el("img", { src: "data:image/svg+xml;utf8," + encodeURIComponent(svg), alt: item.name || item.item_id });
}

function describe(item) {
  const price = item.price == null ? "" : ` · ${Number(item.price).toFixed(2)}`;
  return [el("div", { class: "name", title: item.name || "" }, item.name || item.item_id),
    el("div", { class: "meta" }, `${item.category || "?"}${price}`)];
}

// -- events ---------------------------------------------------------------------------------------
async function act(type, itemId) {
  const item = state.items.get(itemId) || { item_id: itemId };
  const event = {
    event_id: `web-${crypto.randomUUID ? crypto.randomUUID() : Date.now() + "-" + Math.random()}`,
    user_id: state.user,
    type,
    item_id: itemId,
    ts: Date.now(),
    properties: { category: item.category || null, price: item.price ?? null },
  };
  await api("POST", "/v1/events", { events: [event] });
  if (type === "click") state.lastItem = itemId;
  if (type === "add_to_cart") state.cart.push(itemId);
  if (type === "purchase") state.cart = state.cart.filter((i) => i !== itemId);
  await refresh();
}

function actions(itemId, withDismiss) {
  const box = el("div", { class: "actions" },
    el("button", { type: "button", class: "act-click", onclick: () => act("click", itemId) }, "View"),
    el("button", { type: "button", class: "act-cart", onclick: () => act("add_to_cart", itemId) }, "Cart"),
    el("button", { type: "button", class: "act-buy", onclick: () => act("purchase", itemId) }, "Buy"));
  if (withDismiss) {
    box.append(el("button", { type: "button", class: "act-dismiss", onclick: () => act("dismiss", itemId) }, "Not for me"));
  }
  return box;
}

// -- recommendations ------------------------------------------------------------------------------
async function ensureItems(ids) {
  const missing = ids.filter((i) => !state.items.has(i));
  if (!missing.length) return;
  const query = missing.map((i) => "item_id=" + encodeURIComponent(i)).join("&");
  const { data } = await api("GET", "/v1/catalog?" + query);
  for (const item of data.items) state.items.set(item.item_id, item);
}

async function refreshRow(surface) {
  const row = document.querySelector(`.row[data-surface="${surface}"]`);
  const body = { user_id: state.user, surface, k: 10 };
  if (surface === "product_page") {
    row.hidden = !state.lastItem;
    if (!state.lastItem) return null;
    body.context = { item_id: state.lastItem };
    const item = state.items.get(state.lastItem);
    row.querySelector(".context-name").textContent = item ? item.name : state.lastItem;
  }
  if (surface === "cart") {
    row.hidden = state.cart.length === 0;
    if (!state.cart.length) return null;
  }
  const { data, ms } = await api("POST", "/v1/recommendations", body);
  const ids = data.items.map((i) => i.item_id);
  await ensureItems(ids);
  const before = state.rows[surface] ? state.rows[surface].ids : null;
  const list = row.querySelector(".rec-list");
  list.replaceChildren();
  data.items.forEach((rec, position) => {
    const item = state.items.get(rec.item_id) || { item_id: rec.item_id };
    const li = el("li", { "data-item-id": rec.item_id, "data-sources": rec.sources.join(",") },
      picture(item), ...describe(item), actions(rec.item_id, true),
      el("button", { type: "button", class: "why", onclick: () => explain(data.request_id, rec.item_id) }, "why this?"));
    if (before) {
      const was = before.indexOf(rec.item_id);
      if (was < 0) {
        li.classList.add("entered");
        li.append(el("span", { class: "badge entered" }, "new"));
      } else if (was !== position) {
        li.classList.add("moved");
        li.append(el("span", { class: "badge moved" }, was > position ? `↑${was - position}` : `↓${position - was}`));
      }
    }
    list.append(li);
  });
  const left = before ? before.filter((i) => !ids.includes(i)) : [];
  const changes = row.querySelector(".changes");
  changes.textContent = before
    ? `${ids.filter((i) => !before.includes(i)).length} new, ${left.length} left` +
      (left.length ? ` (${left.map((i) => (state.items.get(i) || {}).name || i).join(", ")})` : "") +
      (data.cached ? " · kept list (session freshness)" : "")
    : "";
  state.rows[surface] = { requestId: data.request_id, ids };
  return { data, ms };
}

async function refresh() {
  showError("");
  let last = null;
  for (const surface of SURFACES) {
    const result = await refreshRow(surface);
    if (surface === "home" && result) last = result;
  }
  if (last) {
    const server = last.data.timings_ms && last.data.timings_ms.total;
    document.getElementById("status-tier").textContent = last.data.tier + (last.data.degraded ? " (degraded)" : "");
    document.getElementById("status-latency").textContent =
      `${last.ms.toFixed(1)} ms` + (server != null ? ` (engine ${Number(server).toFixed(1)} ms)` : "");
    document.getElementById("status-version").textContent = String(last.data.session_version);
    document.getElementById("status-model").textContent = last.data.model_version;
  }
  document.body.dataset.sessionVersion = last ? String(last.data.session_version) : "0";
}

// -- explain ----------------------------------------------------------------------------------
function table(rows, head) {
  const t = el("table");
  if (head) t.append(el("tr", {}, ...head.map((h) => el("th", {}, h))));
  for (const r of rows) t.append(el("tr", {}, ...r.map((c) => el("td", {}, String(c)))));
  return t;
}

// One plain-language reason, from the feature that raised the item's score most (the table below
// gives them all). ``after``: the name of the item the shopper looked at last.
const REASONS = [
  [/^(covisit_online|item_users_24h)/, (c) => `People who viewed ${c.after} went on to this in the last hours.`],
  [/^item_(trend|events_(5m|1h))|^popularity_live/, () => "Many shoppers are looking at this right now."],
  [/^covisit_(score|from_last|from_previous)|^session_knn/, (c) => `Shoppers who viewed ${c.after} often view this next.`],
  [/^(seen_count_session|from_recent|session_recency_inv|is_last_session_item|in_cart)/, () => "You looked at this in this visit."],
  [/^(category_share_session|same_category_as_current)/, (c) => `More from ${c.category}, the category you are browsing.`],
  [/^(category_share_history|brand_share_history|user_ann|sim_user_embedding|seen_in_history|history_)/, (c) => `From your favourite category, ${c.category}.`],
  [/^(sim_last_item|session_ann|sim_session_embedding|sequence_|content_score)/, (c) => `Similar to ${c.after}.`],
  [/^(popularity_trained|from_popular)/, () => "A best-seller in this shop."],
];

function reason(item, known) {
  const last = state.items.get(state.lastItem);
  const context = { after: last ? last.name : "what you viewed", category: known.category || "this category" };
  const ranked = Object.entries(item.contributions || {}).filter(([k, v]) => k !== "(bias)" && v > 0)
    .sort((a, b) => b[1] - a[1]);
  for (const [feature] of ranked) {
    const found = REASONS.find(([pattern]) => pattern.test(feature));
    if (found) return found[1](context);
  }
  if (item.sources.covisit_online != null) return REASONS[0][1](context);
  if (item.sources.popular != null) return REASONS[7][1](context);
  return `Picked for this visit from ${Object.keys(item.sources).join(", ") || "the catalog"}.`;
}

async function explain(requestId, itemId) {
  const panel = document.getElementById("explain");
  const body = document.getElementById("explain-body");
  body.replaceChildren(el("p", {}, "recomputing the list from its manifest…"));
  panel.hidden = false;
  panel.dataset.itemId = itemId;
  let data;
  try {
    ({ data } = await api("GET", "/v1/explain/" + encodeURIComponent(requestId)));
  } catch (err) {
    body.replaceChildren(el("p", { class: "bad" }, String(err.message)));
    return;
  }
  const item = data.items.find((i) => i.item_id === itemId);
  const known = state.items.get(itemId) || { item_id: itemId };
  const parts = [el("h3", {}, known.name || itemId),
    el("p", { class: data.identical ? "ok" : "bad" },
      data.identical ? "Recomputed from the event log: identical to what was served."
        : "Recomputed list differs from the served one: " + data.diff.join("; ")),
    el("p", {}, `tier ${data.tier}` + (data.cut.length ? `, cut: ${data.cut.join(", ")}` : ""))];
  if (item) {
    parts.splice(1, 0, el("p", { class: "reason" }, reason(item, known)));
    parts.push(el("p", { class: "score" }, `position ${item.position}, score ${item.score.toFixed(4)}`));
    parts.push(el("h4", {}, "Candidate sources"),
      table(Object.entries(item.sources).map(([k, v]) => [k, Number(v).toFixed(4)]), ["source", "source score"]));
    parts.push(el("h4", {}, "Key features"),
      table(Object.entries(item.features).map(([k, v]) => [k, Number(v).toFixed(4),
        item.contributions[k] != null ? Number(item.contributions[k]).toFixed(4) : "-"]), ["feature", "value", "contribution"]));
    if (item.moved_by.length) parts.push(el("p", {}, "Moved by: " + item.moved_by.join(", ")));
  } else {
    parts.push(el("p", {}, "This item is not in the recomputed list."));
  }
  const rules = Object.entries(data.removed_by_rule || {}).filter(([, ids]) => ids.length);
  parts.push(el("h4", {}, "Rules applied to this list"),
    rules.length ? table(rules.map(([rule, ids]) => [rule, ids.length + " removed"]), ["rule", "effect"])
      : el("p", {}, "No item was removed by a rule."));
  body.replaceChildren(...parts);
}

// -- catalog grid and users -------------------------------------------------------------------
async function loadGrid(category) {
  const query = category ? "&category=" + encodeURIComponent(category) : "";
  const { data } = await api("GET", "/v1/catalog?limit=60" + query);
  state.categories = data.categories;
  const grid = document.getElementById("grid");
  grid.replaceChildren();
  for (const item of data.items) {
    state.items.set(item.item_id, item);
    grid.append(el("div", { class: "card", "data-item-id": item.item_id, "data-category": item.category || "" },
      picture(item), ...describe(item), actions(item.item_id, false)));
  }
}

async function switchUser(user) {
  state.user = user;
  state.lastItem = null;
  state.cart = [];
  state.rows = {};
  document.getElementById("explain").hidden = true;
  await refresh();
}

async function init() {
  const select = document.getElementById("user-select");
  const visitor = "visitor-" + Math.random().toString(36).slice(2, 8);
  const { data: users } = await api("GET", "/v1/demo/users");
  for (const user of users.long_history) select.append(el("option", { value: user }, `${user} (long history)`));
  select.append(el("option", { value: visitor }, `${visitor} (new)`));
  select.addEventListener("change", () => switchUser(select.value));
  document.getElementById("new-user").addEventListener("click", () => {
    const id = "visitor-" + Math.random().toString(36).slice(2, 8);
    select.append(el("option", { value: id }, `${id} (new)`));
    select.value = id;
    switchUser(id);
  });
  document.getElementById("explain-close").addEventListener("click", () => { document.getElementById("explain").hidden = true; });
  await loadGrid("");
  const filter = document.getElementById("category-filter");
  for (const c of state.categories) filter.append(el("option", { value: c }, c));
  filter.addEventListener("change", () => loadGrid(filter.value));
  await switchUser(select.value);
  document.body.dataset.ready = "1";
}

init().catch((err) => showError(String(err.message || err)));
