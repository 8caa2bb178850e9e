// The RustyBalancer dashboard. Plain modern JavaScript, no dependencies, no build step.
//
// Data comes in pushed, never polled: the live queue on `ws` and the event log on `ws/events`
// (both on this page's origin, reconnecting with backoff). `config` is read at start and again
// when a `config_changed` event arrives. Only while no container serves is `status` read
// (every 2 s and on each event), to show why the pool has no ready container; and with the
// queue's pushes, at most once a second, for what the balancers report but nobody pushes: the
// expected work in flight per container and the balancers' queue. Jobs go to the balancer (`balancer_url` in `config`,
// else this host on port 8000), which allows this origin through CORS and exposes X-Backend.
//
// Every piece of text from the network is inserted with `textContent` / text nodes, never as
// markup.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const SERVING = new Set(["LU", "MU", "HU"]);
  const TIMELINE_WINDOW_MS = 5 * 60 * 1000;
  const TIMELINE_MIN_SPAN_MS = 60 * 1000;
  const MAX_EVENTS = 200;
  const MAX_JOBS = 40;
  const JOB_TIMEOUT_MS = 150 * 1000;
  const WORK_REFRESH_MS = 1000;
  const TOKEN_KEY = "rustybalancer.agent-token";
  const JOB_SIZES = {
    monte_carlo_pi: { field: "iterations", label: "iterations", value: 1000000, integer: true },
    primes: { field: "limit", label: "limit", value: 1000000, integer: true },
    sleep: { field: "seconds", label: "seconds", value: 1, integer: false },
  };

  const state = {
    config: null,
    balancerUrl: "",
    items: [],
    seq: null,
    epoch: null,
    names: new Map(), // container id -> dns_name, for the event log
    history: [], // {t, count, util} per queue push
    events: [], // newest first
    eventKeys: new Set(),
    jobSeq: 0,
    work: new Map(), // container id -> expected seconds in flight (balancers' reports)
    load: null, // /status `balancer_load`
  };

  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- DOM helpers

  /** An HTML element; children are nodes or strings (inserted as text). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child)); // strings become text nodes
    }
    return node;
  }

  /** An SVG element with attributes. */
  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    return node;
  }

  function svgText(x, y, text, cls, anchor = "middle") {
    const node = svg("text", { x, y, "text-anchor": anchor, class: cls });
    node.textContent = text;
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.firstChild.remove();
  }

  function setText(id, text) {
    const node = $(id);
    if (node.textContent !== text) node.textContent = text;
  }

  const fmt = {
    score: (x) => (Number.isFinite(x) ? x.toFixed(0) : "–"),
    pct: (x) => (Number.isFinite(x) ? `${x.toFixed(1)} %` : "–"),
    time: (ms) =>
      new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }),
    ms: (ms) => (ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(2)} s`),
    secs: (s) => (Number.isFinite(s) ? `${s.toFixed(1)} s` : "–"),
  };

  /** `app-worker-3` -> `worker-3` (the application prefix is the same for all). */
  function shortName(name) {
    const app = state.config && state.config.app;
    if (app && name.startsWith(`${app}-`)) return name.slice(app.length + 1);
    return name;
  }

  function containerLabel(id) {
    if (!id) return "";
    const name = state.names.get(id);
    return name ? shortName(name) : id.length > 14 ? `${id.slice(0, 12)}…` : id;
  }

  // ---------------------------------------------------------------- URLs, API, token

  const apiUrl = (path) => new URL(path, document.baseURI).href;

  function wsUrl(path) {
    const url = new URL(path, document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  let tokenPrompt = null;

  /** Asks for the token in a dialog; concurrent callers share one dialog. */
  function askToken() {
    if (!tokenPrompt) tokenPrompt = showTokenDialog().finally(() => (tokenPrompt = null));
    return tokenPrompt;
  }

  function showTokenDialog() {
    const dialog = $("token-dialog");
    const input = $("token-input");
    input.value = "";
    return new Promise((resolve) => {
      const done = (token) => {
        dialog.removeEventListener("cancel", onCancel);
        $("token-form").removeEventListener("submit", onSubmit);
        $("token-cancel").removeEventListener("click", onCancel);
        if (dialog.open) dialog.close();
        resolve(token);
      };
      const onSubmit = (event) => {
        event.preventDefault();
        const token = input.value.trim();
        if (token) sessionStorage.setItem(TOKEN_KEY, token);
        done(token || null);
      };
      const onCancel = (event) => {
        event.preventDefault();
        done(null);
      };
      dialog.addEventListener("cancel", onCancel);
      $("token-form").addEventListener("submit", onSubmit);
      $("token-cancel").addEventListener("click", onCancel);
      dialog.showModal();
      input.focus();
    });
  }

  const LOCKED =
    "this agent has no token (AGENT_TOKEN is not set), so its controls are locked; " +
    "restart it with AGENT_TOKEN, or AGENT_INSECURE=true for local experiments";

  function renderTokenState() {
    const locked = state.config && state.config.locked;
    const required = state.config && state.config.token_required;
    const have = sessionStorage.getItem(TOKEN_KEY);
    setText(
      "token-state",
      locked
        ? "locked: the agent has no token"
        : required
          ? have
            ? "token set for this tab"
            : "token required"
          : "",
    );
  }

  /** Reads /config once (no retries); false when the agent does not answer. */
  async function refreshConfig() {
    try {
      const response = await fetch(apiUrl("config"), { cache: "no-store" });
      if (!response.ok) return false;
      applyConfig(await response.json());
      return true;
    } catch (_) {
      return false;
    }
  }

  /** POSTs JSON to the agent, asking for the token once when one is required. */
  async function post(path, body) {
    for (let attempt = 0; attempt < 2; attempt += 1) {
      if (state.config && state.config.locked) throw new Error(LOCKED);
      if (state.config && state.config.token_required && !sessionStorage.getItem(TOKEN_KEY)) {
        const token = await askToken();
        renderTokenState();
        if (!token) throw new Error("cancelled: this agent needs its token");
      }
      const headers = { "Content-Type": "application/json" };
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (token) headers.Authorization = `Bearer ${token}`;
      const response = await fetch(apiUrl(path), {
        method: "POST",
        headers,
        body: body === undefined ? "" : JSON.stringify(body),
      });
      if (response.status === 401) {
        const refused = await response.json().catch(() => ({}));
        // The agent may have restarted without a token: then no token can help.
        await refreshConfig();
        if (state.config && state.config.locked) throw new Error(refused.error || LOCKED);
        sessionStorage.removeItem(TOKEN_KEY);
        if (state.config) state.config.token_required = true;
        renderTokenState();
        continue;
      }
      const data = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
      return data;
    }
    throw new Error("the agent refused the token");
  }

  async function loadConfig() {
    for (let delay = 500; ; delay = Math.min(delay * 2, 10000)) {
      try {
        const response = await fetch(apiUrl("config"), { cache: "no-store" });
        if (response.ok) {
          applyConfig(await response.json());
          return;
        }
      } catch (_) {
        // The agent is restarting; try again.
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  function applyConfig(config) {
    state.config = config;
    const fallback = `${location.protocol}//${location.hostname}:8000`;
    state.balancerUrl = String(config.balancer_url || fallback).replace(/\/+$/, "");
    setText("app-name", config.app || "");
    setText("balancer-url", `via ${state.balancerUrl}`);
    setText("sum-bounds", `${config.min_replicas}–${config.max_replicas}`);
    for (const [id, value] of [
      ["min-replicas", config.min_replicas],
      ["max-replicas", config.max_replicas],
    ]) {
      const input = $(id);
      if (document.activeElement !== input) input.value = value;
    }
    renderTokenState();
    renderGraph();
  }

  // ---------------------------------------------------------------- live connections

  /** A WebSocket that reconnects with jittered exponential backoff (0.5 s .. 10 s). */
  function live(path, pillId, onMessage, onOpen) {
    let delay = 500;
    const pill = $(pillId);
    const connect = () => {
      pill.dataset.state = "connecting";
      const socket = new WebSocket(wsUrl(path));
      socket.addEventListener("open", () => {
        delay = 500;
        pill.dataset.state = "live";
        if (onOpen) onOpen();
      });
      socket.addEventListener("message", (message) => {
        let data;
        try {
          data = JSON.parse(message.data);
        } catch (_) {
          return;
        }
        onMessage(data);
      });
      socket.addEventListener("close", () => {
        pill.dataset.state = "down";
        const wait = delay * (0.75 + Math.random() * 0.5);
        delay = Math.min(delay * 2, 10000);
        setTimeout(connect, wait);
      });
      socket.addEventListener("error", () => socket.close());
    };
    connect();
  }

  function onSnapshot(snapshot) {
    if (!snapshot || !Array.isArray(snapshot.items)) return;
    state.items = snapshot.items;
    state.seq = snapshot.seq;
    // A new leader publishes under a new epoch: show who leads now.
    if (snapshot.epoch !== state.epoch) {
      state.epoch = snapshot.epoch;
      refreshLeader();
    }
    let named = false;
    for (const item of state.items) {
      if (state.names.get(item.id) !== item.dns_name) {
        state.names.set(item.id, item.dns_name);
        named = true;
      }
    }
    // Events that arrived before their container's name did show it now.
    if (named && state.events.length) renderEvents();
    const serving = state.items.filter((i) => SERVING.has(i.utilization_category));
    const util = serving.length ? 100 - serving.reduce((s, i) => s + i.score, 0) / serving.length : null;
    state.history.push({ t: Date.now(), count: state.items.length, util });
    pruneHistory();
    renderSummary(serving, util);
    renderGraph();
    renderContainers();
    renderTimeline();
    if (!serving.length || !$("pool-reason").hidden) refreshPool();
    scheduleWork();
  }

  function onEvent(event) {
    if (!event || typeof event.kind !== "string") return;
    const key = `${event.at_ms}|${event.kind}|${event.container}|${event.message}`;
    if (state.eventKeys.has(key)) return;
    state.eventKeys.add(key);
    const newest = state.events.length === 0 || event.at_ms >= state.events[0].at_ms;
    state.events.push(event);
    state.events.sort((a, b) => b.at_ms - a.at_ms);
    while (state.events.length > MAX_EVENTS) {
      const old = state.events.pop();
      state.eventKeys.delete(`${old.at_ms}|${old.kind}|${old.container}|${old.message}`);
    }
    if (newest) {
      const list = $("events");
      list.prepend(eventItem(event));
      while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
    } else {
      renderEvents();
    }
    $("events-empty").hidden = true;
    setText("events-count", `${state.events.length} shown`);
    if (event.kind === "config_changed") loadConfig();
    if (event.kind === "leader_elected") refreshLeader();
    refreshPool();
  }

  // ---------------------------------------------------------------- pool

  /** While nothing serves: why, from /status `pool.reason` (hidden once a container is ready). */
  async function refreshPool() {
    const node = $("pool-reason");
    const serving = state.items.some((i) => SERVING.has(i.utilization_category));
    if (serving) {
      node.hidden = true;
      return;
    }
    try {
      const response = await fetch(apiUrl("status"), { cache: "no-store" });
      if (!response.ok) return;
      const pool = (await response.json()).pool || {};
      const reason = pool.ready === 0 && typeof pool.reason === "string" ? pool.reason : "";
      node.textContent = reason ? `No ready container: ${reason}` : "";
      node.hidden = !reason;
    } catch (_) {
      // The agent is away; the connection pills say so.
    }
  }

  // ---------------------------------------------------------------- work

  const work = { pending: 0, running: false };

  /**
   * Reads /status now and once more a second later (the balancers' reports trail the queue),
   * at most once a second however often the queue is pushed.
   */
  function scheduleWork() {
    work.pending = 2;
    if (work.running) return;
    work.running = true;
    (async () => {
      while (work.pending > 0) {
        work.pending -= 1;
        await refreshWork();
        await new Promise((resolve) => setTimeout(resolve, WORK_REFRESH_MS));
      }
      work.running = false;
    })();
  }

  /** Work in flight per container and the balancers' queue, from /status. */
  async function refreshWork() {
    try {
      const response = await fetch(apiUrl("status"), { cache: "no-store" });
      if (!response.ok) return;
      const status = await response.json();
      state.work = new Map(
        (status.workers || []).map((w) => [w.container_id, Number(w.work_seconds) || 0]),
      );
      state.load = status.balancer_load || null;
      renderWork();
    } catch (_) {
      // The agent is away; the connection pills say so.
    }
  }

  function renderWork() {
    const load = state.load;
    setText("sum-work", load ? fmt.secs(load.work_in_flight_seconds) : "–");
    setText(
      "sum-queue",
      load ? `${load.queued_for_slot} · ${fmt.secs(load.queued_work_seconds)}` : "–",
    );
    $("sum-queue").title = load
      ? `${load.queued_for_slot} requests wait in the balancers for a free slot, ` +
        `${fmt.secs(load.queued_work_seconds)} of expected work; ` +
        `${load.queued_without_backend} wait with no backend`
      : "";
    for (const [id, row] of rows) {
      const seconds = state.work.get(id);
      setRowText(row.work, seconds ? `${fmt.secs(seconds)} work` : "");
    }
  }

  function setRowText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  // ---------------------------------------------------------------- leader

  /** Who leads, from /status `leadership`: read at start and whenever the epoch changes. */
  async function refreshLeader() {
    try {
      const response = await fetch(apiUrl("status"), { cache: "no-store" });
      if (!response.ok) return;
      const leadership = (await response.json()).leadership;
      if (!leadership) return;
      const leader = leadership.leader;
      const node = $("sum-leader");
      if (!leadership.election) {
        node.textContent = "this agent (alone)";
      } else if (!leader) {
        node.textContent = "none elected";
      } else {
        const since = new Date(leader.since_ms).toLocaleTimeString();
        const self = leader.id === leadership.agent_id ? " (this agent)" : "";
        node.textContent = `${leader.id}${self} · epoch ${leader.epoch} · since ${since}`;
      }
      const agents = (leadership.agents || []).map((a) => `${a.id}${a.leader ? " (leader)" : ""}`);
      node.title = agents.length ? `agents: ${agents.join(", ")}` : "";
      setText("sum-agents", String(agents.length || 1));
    } catch (_) {
      // The agent is away; the connection pills say so.
    }
  }

  // ---------------------------------------------------------------- summary

  function renderSummary(serving, util) {
    setText("sum-containers", String(state.items.length));
    setText("sum-serving", String(serving.length));
    setText("sum-util", util === null ? "–" : fmt.pct(util));
    setText("sum-inflight", String(state.items.reduce((s, i) => s + (i.in_flight || 0), 0)));
    setText("queue-seq", state.seq === null ? "" : `push #${state.seq}`);
    const replicas = $("replicas");
    if (!replicas.dataset.edited && document.activeElement !== replicas) {
      replicas.value = state.items.filter((i) => i.utilization_category !== "SUNDOWN").length;
    }
  }

  // ---------------------------------------------------------------- graph

  const graphNodes = new Map(); // id -> {g, circle, load, label, title, edge}

  /**
   * Node positions for a `w` x `h` drawing: the balancer on the left (on top when narrow) and
   * the containers on a gentle arc facing it, in two staggered rows when crowded.
   */
  function layout(w, h, n) {
    const portrait = w < 520;
    const crowded = n > (portrait ? 3 : 5);
    const balancer = portrait ? { x: w / 2, y: 34 } : { x: 78, y: h / 2 };
    const points = [];
    for (let i = 0; i < n; i += 1) {
      const t = n <= 1 ? 0 : (2 * i) / (n - 1) - 1; // -1 .. 1
      const bend = 1 - Math.cos((t * Math.PI) / 3); // 0 in the middle, 0.5 at the ends
      const back = crowded && i % 2 === 1 ? 1 : 0;
      if (portrait) {
        const span = Math.min(w - 90, (n - 1) * 110);
        points.push({
          x: w / 2 + (t * span) / 2,
          y: h - 80 - bend * 70 - back * 92,
        });
      } else {
        const span = Math.min(h - 110, (n - 1) * 110);
        const right = w - 90;
        points.push({
          x: right - bend * Math.min(160, (right - balancer.x) / 3) - back * 120,
          y: h / 2 + (t * span) / 2,
        });
      }
    }
    return { balancer, points, portrait, crowded };
  }

  function nodeRadius(item, crowded) {
    const load = Math.min(item.in_flight || 0, 25);
    return (16 + 6 * Math.sqrt(load)) * (crowded ? 0.8 : 1);
  }

  let balancerGroup = null;

  function renderGraph() {
    const graph = $("graph");
    const w = Math.max(graph.clientWidth, 200);
    const h = Math.max(graph.clientHeight, 200);
    graph.setAttribute("viewBox", `0 0 ${w} ${h}`);
    let edges = graph.querySelector("g.edges");
    if (!edges) {
      edges = svg("g", { class: "edges" });
      graph.append(edges);
    }
    // Stable places (by name), so nodes do not swap whenever scores change; the Scores list
    // keeps the queue's order.
    const items = [...state.items].sort((a, b) =>
      a.dns_name.localeCompare(b.dns_name, undefined, { numeric: true }),
    );
    const { balancer, points, crowded } = layout(w, h, items.length);

    if (!balancerGroup) {
      balancerGroup = svg("g", { class: "balancer" });
      balancerGroup.append(
        svg("rect", { x: -52, y: -22, width: 104, height: 44, rx: 10 }),
        svgText(0, -3, "balancer", "balancer-name"),
        svgText(0, 12, "", "balancer-url"),
      );
      graph.append(balancerGroup);
    }
    balancerGroup.style.transform = `translate(${balancer.x}px, ${balancer.y}px)`;
    const host = state.balancerUrl.replace(/^[a-z]+:\/\//, "");
    const urlText = balancerGroup.querySelector(".balancer-url");
    if (urlText.textContent !== host) urlText.textContent = host;

    const seen = new Set();
    items.forEach((item, index) => {
      seen.add(item.id);
      let node = graphNodes.get(item.id);
      if (!node) {
        const g = svg("g", { class: "node" });
        g.dataset.id = item.id;
        const title = svg("title");
        const circle = svg("circle", { r: 16 });
        const load = svgText(0, 4, "", "node-load");
        const label = svgText(0, 0, "", "node-label");
        const score = svgText(0, 0, "", "node-score");
        g.append(title, circle, load, label, score);
        const edge = svg("line", { class: "edge" });
        edge.dataset.id = item.id;
        edges.append(edge);
        node = { g, circle, load, label, score, title, edge };
        graphNodes.set(item.id, node);
        graph.append(g);
      }
      const p = points[index];
      const r = nodeRadius(item, crowded);
      const category = item.utilization_category;
      node.g.dataset.category = category;
      node.g.setAttribute("class", `node cat-${category}`);
      node.g.style.transform = `translate(${p.x}px, ${p.y}px)`;
      node.circle.setAttribute("r", r.toFixed(1));
      node.load.textContent = String(item.in_flight || 0);
      node.label.setAttribute("y", (r + 14).toFixed(1));
      node.label.textContent = shortName(item.dns_name);
      node.score.setAttribute("y", (r + 27).toFixed(1));
      node.score.textContent = `${category} · ${fmt.score(item.score)}`;
      node.title.textContent =
        `${item.dns_name}\n${category}, score ${fmt.score(item.score)}, ${item.in_flight} in flight` +
        `${item.concurrency > 0 ? ` (at most ${item.concurrency})` : ""}\n` +
        `${item.address}\n${item.id}`;
      node.edge.setAttribute("class", `edge cat-${category}`);
      node.edge.setAttribute("x1", balancer.x.toFixed(1));
      node.edge.setAttribute("y1", balancer.y.toFixed(1));
      node.edge.setAttribute("x2", p.x.toFixed(1));
      node.edge.setAttribute("y2", p.y.toFixed(1));
      node.edge.setAttribute("stroke-width", (1.2 + Math.min(item.in_flight || 0, 12) * 0.45).toFixed(2));
    });
    for (const [id, node] of graphNodes) {
      if (seen.has(id)) continue;
      node.g.remove();
      node.edge.remove();
      graphNodes.delete(id);
    }
    // Keep the balancer on top of the edges, below nothing else.
    graph.append(balancerGroup);
  }

  // ---------------------------------------------------------------- per-container bars

  const rows = new Map(); // id -> {li, refs}
  const BARS = [
    ["cpu", "cpu_score"],
    ["memory", "memory_score"],
    ["network", "network_score"],
    ["availability", "availability_score"],
    ["overall", "score"],
  ];

  function containerRow(item) {
    const name = el("span", { class: "c-name" });
    const badge = el("span", { class: "badge" });
    const inflight = el("span", { class: "c-inflight muted" });
    const work = el("span", {
      class: "c-work muted",
      title: "expected seconds of the requests in flight, from the balancers' cost estimates",
    });
    const address = el("span", { class: "c-address muted" });
    const drain = el("button", { type: "button", class: "drain" }, "Drain");
    drain.dataset.drain = item.id;
    drain.addEventListener("click", () => drainContainer(item.id, drain));
    const bars = {};
    const barList = el("div", { class: "bars" });
    for (const [label, field] of BARS) {
      const fill = el("span", { class: "bar-fill" });
      const value = el("span", { class: "bar-value" });
      barList.append(
        el(
          "div",
          { class: `bar bar-${label}` },
          el("span", { class: "bar-label" }, label),
          el("span", { class: "bar-track" }, fill),
          value,
        ),
      );
      bars[field] = { fill, value };
    }
    const li = el(
      "li",
      { class: "container" },
      el("div", { class: "c-head" }, name, badge, inflight, work, address, drain),
      barList,
    );
    li.dataset.containerId = item.id;
    return { li, name, badge, inflight, work, address, drain, bars };
  }

  function renderContainers() {
    const list = $("containers");
    const seen = new Set();
    for (const item of state.items) {
      seen.add(item.id);
      let row = rows.get(item.id);
      if (!row) {
        row = containerRow(item);
        rows.set(item.id, row);
      }
      const category = item.utilization_category;
      row.li.dataset.category = category;
      row.name.textContent = shortName(item.dns_name);
      row.name.title = `${item.dns_name} (${item.id})`;
      row.badge.textContent = category;
      row.badge.className = `badge cat-${category}`;
      // At most `concurrency` at once (0 = unlimited); the balancer queues the rest.
      const limit = item.concurrency > 0 ? ` / ${item.concurrency}` : "";
      row.inflight.textContent = `${item.in_flight || 0}${limit} in flight`;
      row.inflight.title = item.concurrency > 0
        ? `a balancer sends it at most ${item.concurrency} at once and queues the rest`
        : "no concurrency limit: a balancer sends it every request at once";
      const seconds = state.work.get(item.id);
      setRowText(row.work, seconds ? `${fmt.secs(seconds)} work` : "");
      row.address.textContent = item.address;
      const draining = category === "SUNDOWN";
      row.drain.disabled = draining || row.drain.dataset.busy === "1";
      row.drain.textContent = draining ? "Draining" : "Drain";
      for (const [, field] of BARS) {
        const value = Number(item[field]);
        const bar = row.bars[field];
        const clamped = Number.isFinite(value) ? Math.max(0, Math.min(100, value)) : 0;
        bar.fill.style.width = `${clamped}%`;
        bar.fill.className = `bar-fill ${clamped >= 70 ? "good" : clamped >= 30 ? "fair" : "poor"}`;
        bar.value.textContent = fmt.score(value);
      }
      list.append(row.li); // (re)appending keeps the queue's order
    }
    for (const [id, row] of rows) {
      if (seen.has(id)) continue;
      row.li.remove();
      rows.delete(id);
    }
    $("containers-empty").hidden = state.items.length > 0;
  }

  async function drainContainer(id, button) {
    button.dataset.busy = "1";
    button.disabled = true;
    try {
      const answer = await post(`containers/${encodeURIComponent(id)}/drain`);
      status(`${containerLabel(answer.id || id)} is draining`);
    } catch (err) {
      status(`drain failed: ${err.message}`, true);
    } finally {
      delete button.dataset.busy;
      renderContainers();
    }
  }

  // ---------------------------------------------------------------- timeline

  function pruneHistory() {
    const cutoff = Date.now() - TIMELINE_WINDOW_MS - 60 * 1000;
    // Keep one point before the window so the lines start at its left edge.
    let drop = 0;
    while (drop + 1 < state.history.length && state.history[drop + 1].t < cutoff) drop += 1;
    if (drop) state.history.splice(0, drop);
  }

  function renderTimeline() {
    const chart = $("timeline");
    const w = Math.max(chart.clientWidth, 200);
    const h = Math.max(chart.clientHeight, 120);
    chart.setAttribute("viewBox", `0 0 ${w} ${h}`);
    clear(chart);
    const m = { left: 30, right: 40, top: 10, bottom: 22 };
    const iw = w - m.left - m.right;
    const ih = h - m.top - m.bottom;
    const now = Date.now();
    const history = state.history;
    // From when the page started (at least a minute) up to the last 5 minutes.
    const age = history.length ? now - history[0].t : 0;
    const span = Math.min(TIMELINE_WINDOW_MS, Math.max(TIMELINE_MIN_SPAN_MS, Math.ceil(age / 60000) * 60000));
    const t0 = now - span;
    const x = (t) => m.left + ((Math.max(t, t0) - t0) / span) * iw;
    const minutes = span / 60000;
    setText("timeline-span", minutes >= 2 ? `last ${minutes} minutes` : "last minute");
    const maxCount = Math.max(
      2,
      (state.config && state.config.max_replicas) || 0,
      ...history.map((p) => p.count),
    );
    const yCount = (c) => m.top + ih - (c / maxCount) * ih;
    const yUtil = (u) => m.top + ih - (Math.max(0, Math.min(100, u)) / 100) * ih;

    const grid = svg("g", { class: "gridlines" });
    for (const u of [0, 25, 50, 75, 100]) {
      grid.append(svg("line", { x1: m.left, x2: m.left + iw, y1: yUtil(u), y2: yUtil(u) }));
      grid.append(svgText(m.left + iw + 6, yUtil(u) + 4, `${u}%`, "axis util-axis", "start"));
    }
    const step = maxCount <= 6 ? 1 : Math.ceil(maxCount / 5);
    for (let c = 0; c <= maxCount; c += step) {
      grid.append(svgText(m.left - 6, yCount(c) + 4, String(c), "axis count-axis", "end"));
    }
    const tick = [10, 15, 30, 60].map((s) => s * 1000).find((t) => span / t <= 6) || 60000;
    for (let back = span; back >= 0; back -= tick) {
      const tx = x(now - back);
      const label = back === 0 ? "now" : back % 60000 === 0 ? `-${back / 60000}m` : `-${back / 1000}s`;
      grid.append(svg("line", { class: "vgrid", x1: tx, x2: tx, y1: m.top, y2: m.top + ih }));
      grid.append(svgText(tx, h - 6, label, "axis"));
    }
    chart.append(grid);
    if (!history.length) return;

    // Container count: a step line; utilisation: a line with a faint area, gaps where no
    // container was serving.
    let count = "";
    history.forEach((p, i) => {
      const px = x(p.t).toFixed(1);
      count += i === 0 ? `M${px},${yCount(p.count).toFixed(1)}` : `H${px}V${yCount(p.count).toFixed(1)}`;
    });
    count += `H${x(now).toFixed(1)}`;
    const segments = [];
    let current = [];
    for (const p of history) {
      if (p.util === null) {
        if (current.length) segments.push(current);
        current = [];
      } else current.push(p);
    }
    if (current.length) segments.push(current);
    for (const segment of segments) {
      const last = segment[segment.length - 1];
      const isTail = last === history[history.length - 1];
      const pts = segment.map((p) => [x(p.t), yUtil(p.util)]);
      if (isTail) pts.push([x(now), yUtil(last.util)]);
      const line = pts.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join("");
      const base = yUtil(0).toFixed(1);
      const area = `${line}L${pts[pts.length - 1][0].toFixed(1)},${base}L${pts[0][0].toFixed(1)},${base}Z`;
      chart.append(svg("path", { class: "util-area", d: area }));
      chart.append(svg("path", { class: "util-line", d: line }));
    }
    chart.append(svg("path", { class: "count-line", d: count }));
  }

  // ---------------------------------------------------------------- event log

  function eventItem(event) {
    const li = el(
      "li",
      { class: "event" },
      el("time", { datetime: new Date(event.at_ms).toISOString() }, fmt.time(event.at_ms)),
      el("span", { class: `kind kind-${event.kind}` }, event.kind.replace(/_/g, " ")),
      el("span", { class: "event-container", title: event.container || "" }, containerLabel(event.container)),
      el("span", { class: "event-message" }, event.message || ""),
    );
    li.dataset.kind = event.kind;
    if (event.container) li.dataset.container = event.container;
    return li;
  }

  function renderEvents() {
    const list = $("events");
    clear(list);
    for (const event of state.events) list.append(eventItem(event));
  }

  // ---------------------------------------------------------------- jobs

  function syncJobSize() {
    const spec = JOB_SIZES[$("job-operation").value];
    $("job-size-label").textContent = spec.label;
    const size = $("job-size");
    size.step = spec.integer ? "1" : "any";
    size.value = spec.value;
  }

  function jobItem(job) {
    const stateText = el("span", { class: "job-state" }, "running");
    const result = el("span", { class: "job-result" });
    const time = el("span", { class: "job-time muted" });
    const backend = el("span", { class: "job-backend" });
    const li = el(
      "li",
      { class: "job" },
      el("span", { class: "job-name" }, `#${job.n} ${job.operation} ${job.field}=${job.value}`),
      stateText,
      result,
      time,
      backend,
    );
    li.dataset.state = "pending";
    return { li, state: stateText, result, time, backend };
  }

  function formatResult(operation, result) {
    if (typeof result !== "number") return JSON.stringify(result);
    if (operation === "monte_carlo_pi") return `π ≈ ${result.toFixed(6)}`;
    if (operation === "primes") return `${result.toLocaleString()} primes`;
    if (operation === "sleep") return `slept ${result.toFixed(3)} s`;
    return String(result);
  }

  async function runJob(job) {
    const row = jobItem(job);
    const list = $("jobs");
    list.prepend(row.li);
    while (list.children.length > MAX_JOBS) list.lastElementChild.remove();
    $("jobs-empty").hidden = true;
    const started = performance.now();
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), JOB_TIMEOUT_MS);
    try {
      const response = await fetch(`${state.balancerUrl}/submit`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ operation: job.operation, data: { [job.field]: job.value } }),
        signal: abort.signal,
      });
      const elapsed = performance.now() - started;
      const text = await response.text();
      let body = null;
      try {
        body = JSON.parse(text);
      } catch (_) {
        body = null;
      }
      const backend = response.headers.get("X-Backend");
      row.backend.textContent = backend || "(no X-Backend)";
      row.backend.title = body && body.worker_id ? `worker_id ${body.worker_id}` : "";
      row.li.dataset.backend = backend || "";
      const serverTime = body && body.time_taken ? ` (worker ${body.time_taken})` : "";
      row.time.textContent = `${fmt.ms(elapsed)}${serverTime}`;
      if (response.ok && body) {
        row.li.dataset.state = "done";
        row.state.textContent = "done";
        row.result.textContent = formatResult(job.operation, body.result);
      } else {
        row.li.dataset.state = "error";
        row.state.textContent = `HTTP ${response.status}`;
        row.result.textContent = (body && body.error) || text.slice(0, 200) || response.statusText;
      }
    } catch (err) {
      row.li.dataset.state = "error";
      row.state.textContent = "failed";
      row.result.textContent =
        err.name === "AbortError"
          ? "no answer in time"
          : `cannot reach the balancer at ${state.balancerUrl} (running, with CORS_ORIGINS allowing this page?)`;
      row.time.textContent = fmt.ms(performance.now() - started);
    } finally {
      clearTimeout(timer);
    }
  }

  function submitJobs(event) {
    event.preventDefault();
    const operation = $("job-operation").value;
    const spec = JOB_SIZES[operation];
    const raw = Number($("job-size").value);
    if (!Number.isFinite(raw) || raw < 0) return;
    const value = spec.integer ? Math.round(raw) : raw;
    const count = Math.max(1, Math.min(50, Math.round(Number($("job-count").value) || 1)));
    for (let i = 0; i < count; i += 1) {
      state.jobSeq += 1;
      runJob({ n: state.jobSeq, operation, field: spec.field, value });
    }
  }

  // ---------------------------------------------------------------- controls

  function status(text, isError = false) {
    const node = $("control-status");
    node.textContent = text;
    node.dataset.kind = isError ? "error" : "ok";
  }

  async function setBounds(event) {
    event.preventDefault();
    const min = Number($("min-replicas").value);
    const max = Number($("max-replicas").value);
    try {
      const answer = await post("scale", { min_replicas: min, max_replicas: max });
      status(`bounds set to ${answer.min_replicas}–${answer.max_replicas}`);
      loadConfig();
    } catch (err) {
      status(`could not set the bounds: ${err.message}`, true);
    }
  }

  async function setReplicas(event) {
    event.preventDefault();
    const replicas = Number($("replicas").value);
    try {
      const answer = await post("scale", { replicas });
      status(`scaling to ${answer.replicas} (bounds ${answer.min_replicas}–${answer.max_replicas})`);
    } catch (err) {
      status(`could not scale: ${err.message}`, true);
    }
  }

  // ---------------------------------------------------------------- start

  function start() {
    $("job-operation").addEventListener("change", syncJobSize);
    $("job-form").addEventListener("submit", submitJobs);
    $("bounds-form").addEventListener("submit", setBounds);
    $("replicas-form").addEventListener("submit", setReplicas);
    // Follows the live count until someone types a number of their own.
    $("replicas").addEventListener("input", (event) => {
      event.target.dataset.edited = "1";
    });
    syncJobSize();

    let resizeFrame = 0;
    window.addEventListener("resize", () => {
      cancelAnimationFrame(resizeFrame);
      resizeFrame = requestAnimationFrame(() => {
        renderGraph();
        renderTimeline();
      });
    });
    // The time axis moves on even when nothing changes (drawing only, no requests).
    setInterval(renderTimeline, 1000);
    setInterval(refreshPool, 2000);

    loadConfig().then(() => {
      live("ws", "conn-queue", onSnapshot);
      live("ws/events", "conn-events", onEvent);
    });
    renderTimeline();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
