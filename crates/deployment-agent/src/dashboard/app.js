// The RustyBalancer dashboard. Plain modern JavaScript, no dependencies, no build step.
//
// Data comes in pushed, never polled: the live queue on `ws` and the event log on `ws/events`
// (both on this page's origin, reconnecting with backoff). `config` is read at start and again
// when a `config_changed` event arrives. Only while no container serves is `status` read
// (every 2 s and on each event), to show why the pool has no ready container; and with the
// queue's pushes, at most once a second, for what the balancers report but nobody pushes: the
// expected work in flight per container and the balancers' queue. Jobs go to the balancer (`balancer_url` in `config`,
// else this host on port 8000), which allows this origin through CORS and exposes X-Backend
// and X-Request-Id. A container's logs come from `containers/{id}/logs` (NDJSON: its recent
// lines, then a live follow read as a stream, reopened while the panel is open); a request's
// journey from `requests/{id}`, which the agent joins from the balancers' records and the
// containers' logs.
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
  const LOG_TAIL = 200;
  const MAX_LOG_LINES = 1000;
  const LOG_RETRY_MAX_MS = 10000;
  const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
  // Terminal colour codes (ESC [ ... m) a program may write to its log; not shown.
  const ANSI = /\u001b\[[0-9;]*[A-Za-z]/g;
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
    /** A duration with a decimal under 10 ms (a proxy's timings are often below 1 ms). */
    fine: (ms) => (!Number.isFinite(ms) ? "–" : ms < 10 ? `${ms.toFixed(1)} ms` : fmt.ms(ms)),
    /** `12:00:01.234` */
    clock: (ms) =>
      Number.isFinite(ms) ? `${fmt.time(ms)}.${String(Math.floor(ms % 1000)).padStart(3, "0")}` : "–",
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
    const logsButton = el("button", { type: "button", class: "logs-open", title: "its log lines, following live" }, "Logs");
    logsButton.dataset.logs = item.id;
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
      el(
        "div",
        { class: "c-head" },
        name,
        badge,
        inflight,
        work,
        address,
        el("span", { class: "c-actions" }, logsButton, drain),
      ),
      barList,
    );
    li.dataset.containerId = item.id;
    // The row opens its logs (its Drain button does not).
    li.addEventListener("click", (event) => {
      if (event.target.closest("button.drain")) return;
      openLogs(item.id);
    });
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
      { class: "job", tabindex: "0" },
      el("span", { class: "job-name" }, `#${job.n} ${job.operation} ${job.field}=${job.value}`),
      stateText,
      result,
      time,
      backend,
    );
    li.dataset.state = "pending";
    // Its journey once the balancer has named it (X-Request-Id).
    const show = () => {
      if (li.dataset.requestId) showJourney(li.dataset.requestId);
    };
    li.addEventListener("click", show);
    li.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        show();
      }
    });
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
      const requestId = response.headers.get("X-Request-Id");
      if (requestId) {
        row.li.dataset.requestId = requestId;
        row.li.title = `request ${requestId}: click for its journey`;
      }
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

  // ---------------------------------------------------------------- container logs

  const logs = { id: null, abort: null, lastAt: null };

  /**
   * Reads an NDJSON answer as it arrives, calling `onLine` with each parsed object; resolves
   * when the answer ends. `onOpen` runs once the headers are in. Throws on an HTTP error
   * (with the agent's message) and when `signal` aborts.
   */
  async function readNdjson(path, signal, onLine, onOpen) {
    const response = await fetch(apiUrl(path), { cache: "no-store", signal });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error || `HTTP ${response.status}`);
    }
    if (onOpen) onOpen();
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    const take = (text) => {
      const trimmed = text.trim();
      if (!trimmed) return;
      try {
        onLine(JSON.parse(trimmed));
      } catch (_) {
        // Not a line of ours; skip it.
      }
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffered.indexOf("\n")) >= 0) {
        take(buffered.slice(0, end));
        buffered = buffered.slice(end + 1);
      }
    }
    take(buffered + decoder.decode());
  }

  function setLogsState(stateName, text) {
    $("logs").dataset.state = stateName;
    setText("logs-state", text);
  }

  function appendLogLine(entry) {
    const list = $("logs");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 24;
    const li = el(
      "li",
      { class: `log-line stream-${entry.stream === "stdout" ? "stdout" : "stderr"}` },
      el("time", entry.at_ms ? { datetime: new Date(entry.at_ms).toISOString() } : {}, entry.at_ms ? fmt.clock(entry.at_ms) : ""),
      el("span", { class: "log-text" }, (entry.line || "").replace(ANSI, "")),
    );
    li.dataset.stream = entry.stream || "";
    list.append(li);
    while (list.children.length > MAX_LOG_LINES) list.firstElementChild.remove();
    if (Number.isFinite(entry.at_ms)) logs.lastAt = entry.at_ms;
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  /** Shows a container's logs: its last lines, then new ones live until closed. */
  function openLogs(id) {
    closeLogs();
    const abort = new AbortController();
    logs.id = id;
    logs.abort = abort;
    logs.lastAt = null;
    const panel = $("logs-panel");
    panel.hidden = false;
    panel.dataset.container = id;
    $("logs").dataset.container = id;
    clear($("logs"));
    setText("logs-name", containerLabel(id));
    $("logs-name").title = id;
    followLogs(id, abort.signal);
    panel.scrollIntoView({ block: "nearest" });
  }

  function closeLogs() {
    if (logs.abort) logs.abort.abort();
    logs.abort = null;
    logs.id = null;
    $("logs-panel").hidden = true;
    setLogsState("closed", "");
  }

  async function followLogs(id, signal) {
    const base = `containers/${encodeURIComponent(id)}/logs`;
    setLogsState("loading", "loading…");
    let delay = 500;
    let first = true;
    while (!signal.aborted) {
      try {
        if (first) {
          await readNdjson(`${base}?tail=${LOG_TAIL}`, signal, appendLogLine);
          first = false;
        }
        // Live: a follow ends after the agent's LOGS_FOLLOW_MAX; it is opened again while
        // the panel stays open (after a pause when it ended at once: a stopped container).
        const opened = Date.now();
        await readNdjson(`${base}?follow=true&tail=0`, signal, appendLogLine, () => {
          setLogsState("following", "following live");
        });
        if (signal.aborted) return;
        setLogsState("reconnecting", "reconnecting…");
        if (Date.now() - opened < 2000) {
          await new Promise((resolve) => setTimeout(resolve, delay));
          delay = Math.min(delay * 2, LOG_RETRY_MAX_MS);
        } else {
          delay = 500;
        }
      } catch (err) {
        if (signal.aborted) return;
        setLogsState("error", `${err.message}; trying again…`);
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, LOG_RETRY_MAX_MS);
      }
    }
  }

  // ---------------------------------------------------------------- request journey

  let journeyAbort = null;

  function journeyError(text) {
    const box = $("journey");
    box.dataset.state = "error";
    $("journey-empty").hidden = true;
    $("journey-body").hidden = true;
    const error = $("journey-error");
    error.hidden = false;
    error.textContent = text;
  }

  /** Fetches and shows `requests/{id}`. */
  async function showJourney(id) {
    id = id.trim();
    $("journey-id").value = id;
    if (!REQUEST_ID.test(id)) {
      journeyError("A request id is 1 to 128 of the characters A–Z a–z 0–9 . _ : -");
      return;
    }
    if (journeyAbort) journeyAbort.abort();
    const abort = new AbortController();
    journeyAbort = abort;
    const box = $("journey");
    box.dataset.state = "loading";
    box.dataset.id = id;
    $("journey-error").hidden = true;
    box.closest("section").scrollIntoView({ block: "nearest" });
    try {
      const response = await fetch(apiUrl(`requests/${encodeURIComponent(id)}`), {
        cache: "no-store",
        signal: abort.signal,
      });
      const body = await response.json().catch(() => ({}));
      if (abort.signal.aborted) return;
      if (!response.ok) {
        const unreachable = (body.unreachable || []).map((u) => `${u.url} (${u.error})`);
        const more = unreachable.length ? `; not reached: ${unreachable.join(", ")}` : "";
        journeyError(
          response.status === 404
            ? `Request ${id} not found: ${body.error || "no balancer remembers it"}${more}`
            : `${body.error || `HTTP ${response.status}`}${more}`,
        );
        return;
      }
      renderJourney(body);
    } catch (err) {
      if (err.name === "AbortError") return;
      journeyError(`cannot reach the agent: ${err.message}`);
    } finally {
      if (journeyAbort === abort) journeyAbort = null;
    }
  }

  function renderJourney(journey) {
    const record = journey.record || {};
    const box = $("journey");
    box.dataset.state = "found";
    box.dataset.id = journey.id;
    $("journey-empty").hidden = true;
    $("journey-error").hidden = true;
    $("journey-body").hidden = false;

    const summary = $("journey-summary");
    clear(summary);
    const status = record.status === null || record.status === undefined ? "no answer" : String(record.status);
    summary.append(
      el("code", { class: "journey-request" }, `${record.method || "?"} ${record.path || "?"}`),
      " → ",
      el("span", { class: `journey-status ${Number(record.status) >= 500 || !record.status ? "bad" : "good"}` }, status),
      ` in ${fmt.fine(record.latency_ms)}`,
      ` · cache ${record.cache || "–"}`,
      ` · at ${fmt.clock(record.started_at_ms)}`,
      ` · balancer ${journey.balancer || "?"}`,
    );
    if (record.error) summary.append(el("span", { class: "journey-failure" }, ` · ${record.error}`));

    const attempts = $("journey-attempts");
    clear(attempts);
    const list = record.attempts || [];
    if (!list.length) attempts.append(el("li", { class: "muted" }, "No attempt: the balancer answered it itself."));
    list.forEach((attempt, index) => {
      // When it started, after the request arrived.
      const after = Number.isFinite(attempt.after_ms)
        ? attempt.after_ms
        : attempt.started_at_ms - record.started_at_ms;
      const offset = Number.isFinite(after) ? ` · started at +${fmt.fine(after)}` : "";
      const li = el(
        "li",
        { class: "journey-attempt" },
        el("span", { class: "attempt-n" }, `#${index + 1}`),
        el("span", { class: "attempt-backend", title: `${attempt.backend || ""} ${attempt.address || ""}` },
          attempt.name ? shortName(attempt.name) : containerLabel(attempt.backend)),
        el("span", { class: `attempt-outcome outcome-${attempt.outcome === "answered" ? "ok" : "bad"}` },
          `${attempt.outcome || "?"}${attempt.status ? ` ${attempt.status}` : ""}`),
        el("span", { class: "attempt-time muted" },
          `${fmt.fine(attempt.duration_ms)}${offset}`),
        attempt.retry ? el("span", { class: "attempt-retry" }, `retried: ${attempt.retry}`) : null,
      );
      li.dataset.backend = attempt.backend || "";
      li.dataset.outcome = attempt.outcome || "";
      attempts.append(li);
    });

    const notes = [];
    for (const c of journey.containers || []) {
      if (c.error) notes.push(`${shortName(c.name || c.container)}: ${c.error}`);
      else if (c.truncated) notes.push(`${shortName(c.name || c.container)}: only the first lines read`);
    }
    for (const u of journey.unreachable || []) notes.push(`balancer ${u.url} not reached: ${u.error}`);
    setText("journey-notes", notes.join(" · "));

    const lines = $("journey-logs");
    clear(lines);
    for (const entry of journey.logs || []) {
      const li = el(
        "li",
        { class: "journey-log" },
        el("time", entry.at_ms ? { datetime: new Date(entry.at_ms).toISOString() } : {}, entry.at_ms ? fmt.clock(entry.at_ms) : ""),
        el("span", { class: "log-container", title: entry.container || "" }, shortName(entry.name || entry.container || "")),
        el("span", { class: "log-text" }, (entry.line || "").replace(ANSI, "")),
      );
      li.dataset.container = entry.container || "";
      li.dataset.stream = entry.stream || "";
      lines.append(li);
    }
    $("journey-logs-empty").hidden = (journey.logs || []).length > 0;
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
    $("journey-form").addEventListener("submit", (event) => {
      event.preventDefault();
      showJourney($("journey-id").value);
    });
    $("logs-close").addEventListener("click", closeLogs);
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
