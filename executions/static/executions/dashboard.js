/*
 * The executions dashboard: one WebSocket to /ws (the page's session authenticates it), the
 * chosen graph's executions rendered as timelines of nodes, updated live.
 *
 * - First subscription to a graph asks for a snapshot (the current state of its latest
 *   execution); every later one (after a reconnect, or coming back to the graph) asks for
 *   everything `since` the last sequence number seen, so nothing is missed.
 * - Each graph remembers the last `seq` it rendered and drops anything at or below it, so
 *   nothing is shown twice.
 * - A dropped connection is retried with exponential backoff and jitter.
 * - Event data only ever reaches the page through textContent and attributes, never as HTML.
 */
(function () {
  "use strict";

  const STATUSES = {
    QUEUED: { label: "Queued", icon: "\u25F7" }, // ◷
    RUNNING: { label: "Running", icon: "\u25B6" }, // ▶
    COMPLETED: { label: "Completed", icon: "\u2713" }, // ✓
    FAILED: { label: "Failed", icon: "\u2715" }, // ✕
    INCOMPLETE: { label: "Incomplete", icon: "!" },
  };
  const UNKNOWN_STATUS = { label: "Unknown", icon: "?" };
  const TERMINAL = new Set(["COMPLETED", "FAILED", "INCOMPLETE"]);

  const BACKOFF_BASE_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const HEARTBEAT_EVERY_MS = 25000;
  const HEARTBEAT_TIMEOUT_MS = 10000;
  const MAX_EXECUTIONS_SHOWN = 50;

  const root = document.getElementById("dashboard");
  if (!root) {
    return; // not logged in: nothing to do
  }

  const connectionEl = document.getElementById("connection");
  const connectionText = connectionEl.querySelector(".connection-text");
  const panelHeading = document.getElementById("panel-heading");
  const panelActions = document.getElementById("panel-actions");
  const noticeEl = document.getElementById("panel-notice");
  const executionsEl = document.getElementById("executions");
  const announcer = document.getElementById("announcer");
  const demoForm = document.getElementById("demo-form");
  const demoStatus = document.getElementById("demo-status");
  const graphLinks = Array.from(root.querySelectorAll("a[data-graph-id]"));

  /** graph id -> {id, label, lastSeq, acked, executions: Map, el, listEl, emptyEl, notice} */
  const graphs = new Map();
  let current = null; // the graph shown
  let socket = null; // the live WebSocket, or null
  let subscribed = new Set(); // graphs subscribed on the current socket
  let attempt = 0; // reconnect attempts since the last successful open
  let reconnectTimer = null;
  let heartbeatTimer = null;
  let pongTimer = null;
  let gaveUp = false; // the session ended: reconnecting would only fail again

  // --- small DOM helpers ---------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function statusInfo(status) {
    return STATUSES[status] || UNKNOWN_STATUS;
  }

  function parseTime(value) {
    if (!value) return null;
    const ms = Date.parse(value);
    return Number.isNaN(ms) ? null : ms;
  }

  function formatDuration(ms) {
    if (ms < 0) ms = 0;
    if (ms < 1000) return Math.round(ms) + " ms";
    const seconds = ms / 1000;
    if (seconds < 10) return seconds.toFixed(1) + " s";
    if (seconds < 60) return Math.round(seconds) + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min " + String(Math.round(seconds % 60)).padStart(2, "0") + " s";
    return Math.floor(minutes / 60) + " h " + String(minutes % 60).padStart(2, "0") + " min";
  }

  function formatClock(ms) {
    return new Date(ms).toLocaleTimeString();
  }

  function pretty(value) {
    try {
      return JSON.stringify(value, null, 2);
    } catch (error) {
      return String(value);
    }
  }

  function setBadge(badge, status) {
    const info = statusInfo(status);
    badge.dataset.status = status;
    badge.querySelector(".status-icon").textContent = info.icon;
    badge.querySelector(".status-text").textContent = info.label;
  }

  function makeBadge(status) {
    const badge = el("span", "status-badge");
    const icon = el("span", "status-icon");
    icon.setAttribute("aria-hidden", "true");
    badge.append(icon, el("span", "status-text"));
    setBadge(badge, status);
    return badge;
  }

  function announce(message) {
    announcer.textContent = message;
  }

  // --- the connection indicator ----------------------------------------------------------

  const CONNECTION_TEXT = {
    idle: "Not connected",
    connecting: "Connecting\u2026",
    connected: "Connected",
    reconnecting: "Reconnecting\u2026",
    offline: "Offline",
  };

  function setConnection(state, detail) {
    const text = CONNECTION_TEXT[state] + (detail ? " (" + detail + ")" : "");
    if (connectionEl.dataset.state === state && connectionText.textContent === text) return;
    connectionEl.dataset.state = state;
    connectionText.textContent = text;
  }

  // --- per-graph state and rendering -----------------------------------------------------

  function labelOf(graphId) {
    const link = graphLinks.find((a) => a.dataset.graphId === graphId);
    return link ? link.dataset.graphLabel || graphId : graphId;
  }

  function graphState(graphId) {
    let state = graphs.get(graphId);
    if (state) return state;
    const section = el("div", "graph-executions");
    section.dataset.graphId = graphId;
    section.hidden = true;
    const empty = el(
      "p",
      "empty",
      "No executions yet. " +
        (demoForm ? "Press \u201cRun demo graph\u201d, or publish" : "Publish") +
        " results for this graph to POST " +
        (root.dataset.ingestUrl || "the ingest endpoint") + "."
    );
    const list = el("div", "execution-list");
    section.append(empty, list);
    executionsEl.append(section);
    state = {
      id: graphId,
      label: labelOf(graphId),
      lastSeq: 0,
      acked: false,
      executions: new Map(),
      el: section,
      listEl: list,
      emptyEl: empty,
      notice: "",
    };
    // What tests and curious people can read off the page: the subscription, the last event
    // number shown, and how many events were rendered (each exactly once).
    section.dataset.subscription = "none";
    section.dataset.lastSeq = "0";
    section.dataset.applied = "0";
    graphs.set(graphId, state);
    return state;
  }

  function resetGraph(state) {
    state.lastSeq = 0;
    state.el.dataset.lastSeq = "0";
    state.el.dataset.applied = "0";
    state.executions.clear();
    state.listEl.replaceChildren();
    state.emptyEl.hidden = false;
  }

  function showNotice(state, message) {
    state.notice = message;
    if (state.id === current) {
      noticeEl.textContent = message;
      noticeEl.hidden = !message;
    }
  }

  function createExecution(state, result) {
    const article = el("article", "execution");
    article.dataset.graphExecId = result.graph_exec_id;
    const head = el("header", "execution-head");
    const title = el("h3", "execution-title");
    title.append("Execution ", el("code", "execution-id", result.graph_exec_id));
    const badge = makeBadge("QUEUED");
    const summary = el("p", "execution-summary");
    head.append(title, badge, summary);
    const timeline = el("ol", "timeline");
    timeline.setAttribute("aria-label", "Nodes of execution " + result.graph_exec_id);
    article.append(head, timeline);
    const execution = {
      id: result.graph_exec_id,
      version: result.graph_version,
      el: article,
      badge: badge,
      summaryEl: summary,
      timelineEl: timeline,
      nodes: new Map(),
      status: null,
    };
    state.executions.set(execution.id, execution);
    state.listEl.prepend(article); // newest first
    state.emptyEl.hidden = true;
    while (state.executions.size > MAX_EXECUTIONS_SHOWN) {
      const oldest = state.executions.keys().next().value;
      state.executions.get(oldest).el.remove();
      state.executions.delete(oldest);
    }
    return execution;
  }

  function createNode(execution, result) {
    const item = el("li", "node");
    item.dataset.nodeExecId = result.node_exec_id;
    const marker = el("span", "node-marker");
    marker.setAttribute("aria-hidden", "true");
    const body = el("div", "node-body");
    const head = el("div", "node-head");
    const name = el("span", "node-name", result.node_id);
    const badge = makeBadge(result.status);
    const duration = el("span", "node-duration");
    head.append(name, badge, duration);
    const meta = el("p", "node-meta");
    const details = el("details", "node-data");
    const summary = el("summary", null, "Inputs and outputs");
    const inputs = el("pre", "node-inputs");
    const outputs = el("pre", "node-outputs");
    details.append(
      summary,
      el("h4", null, "Inputs"),
      inputs,
      el("h4", null, "Outputs"),
      outputs
    );
    body.append(head, meta, details);
    item.append(marker, body);
    // The timeline is in the order the nodes were added to the execution, whatever order
    // their latest results arrive in (a snapshot sends each node's latest, by number).
    const added = parseTime(result.add_time);
    const key = added === null ? Infinity : added;
    const later = Array.from(execution.timelineEl.children).find(
      (row) => execution.nodes.get(row.dataset.nodeExecId).sortKey > key
    );
    execution.timelineEl.insertBefore(item, later || null);
    const node = {
      sortKey: key,
      el: item,
      marker: marker,
      badge: badge,
      durationEl: duration,
      metaEl: meta,
      inputsEl: inputs,
      outputsEl: outputs,
      result: result,
    };
    execution.nodes.set(result.node_exec_id, node);
    return node;
  }

  function nodeDuration(result, now) {
    const start = parseTime(result.start_time);
    const end = parseTime(result.end_time);
    if (start !== null && end !== null) return formatDuration(end - start);
    if (start !== null && result.status === "RUNNING") return "running for " + formatDuration(now - start);
    return "";
  }

  function updateNode(node, result, seq) {
    node.result = result;
    node.el.dataset.status = result.status;
    node.marker.textContent = statusInfo(result.status).icon;
    setBadge(node.badge, result.status);
    node.durationEl.textContent = nodeDuration(result, Date.now());
    const meta = ["block " + result.block_id];
    const started = parseTime(result.start_time);
    if (started !== null) meta.push("started " + formatClock(started));
    meta.push("node execution " + result.node_exec_id);
    if (typeof seq === "number") meta.push("#" + seq);
    node.metaEl.textContent = meta.join(" \u00b7 ");
    // Updating the text in place keeps an opened <details> open.
    node.inputsEl.textContent = pretty(result.input_data);
    node.outputsEl.textContent = pretty(result.output_data);
  }

  function executionStatus(execution) {
    const statuses = Array.from(execution.nodes.values(), (n) => n.result.status);
    if (statuses.length === 0) return "QUEUED";
    if (statuses.every((s) => s === "QUEUED")) return "QUEUED";
    if (statuses.some((s) => s === "RUNNING" || s === "QUEUED")) return "RUNNING";
    if (statuses.includes("FAILED")) return "FAILED";
    if (statuses.includes("INCOMPLETE")) return "INCOMPLETE";
    return "COMPLETED";
  }

  function executionTimes(execution) {
    let start = null;
    let end = null;
    for (const node of execution.nodes.values()) {
      const r = node.result;
      const s = parseTime(r.start_time) ?? parseTime(r.queue_time) ?? parseTime(r.add_time);
      if (s !== null && (start === null || s < start)) start = s;
      const e = parseTime(r.end_time);
      if (e !== null && (end === null || e > end)) end = e;
    }
    return { start, end };
  }

  function updateExecution(state, execution) {
    const status = executionStatus(execution);
    const counts = {};
    for (const node of execution.nodes.values()) {
      counts[node.result.status] = (counts[node.result.status] || 0) + 1;
    }
    const parts = [execution.nodes.size + (execution.nodes.size === 1 ? " node" : " nodes")];
    for (const key of Object.keys(STATUSES)) {
      if (counts[key]) parts.push(counts[key] + " " + STATUSES[key].label.toLowerCase());
    }
    const times = executionTimes(execution);
    if (times.start !== null) {
      const finished = TERMINAL.has(status) && times.end !== null;
      const until = finished ? times.end : Date.now();
      parts.push((finished ? "took " : "running for ") + formatDuration(until - times.start));
    }
    execution.summaryEl.textContent = parts.join(" \u00b7 ");
    execution.el.dataset.status = status;
    setBadge(execution.badge, status);
    if (execution.status !== null && execution.status !== status && state.id === current) {
      announce("Execution " + execution.id + ": " + statusInfo(status).label.toLowerCase());
    }
    execution.status = status;
  }

  function applyEvent(graphId, result, seq) {
    const state = graphs.get(graphId);
    if (!state || !result || typeof result !== "object") return;
    if (typeof seq === "number") {
      if (seq <= state.lastSeq) return; // seen already
      state.lastSeq = seq;
      state.el.dataset.lastSeq = String(seq);
    }
    state.el.dataset.applied = String(Number(state.el.dataset.applied) + 1);
    let execution = state.executions.get(result.graph_exec_id);
    if (!execution) execution = createExecution(state, result);
    let node = execution.nodes.get(result.node_exec_id);
    if (!node) node = createNode(execution, result);
    updateNode(node, result, seq);
    updateExecution(state, execution);
  }

  /** Running nodes and unfinished executions show a duration that grows: refresh it. */
  function tick() {
    const state = current && graphs.get(current);
    if (!state) return;
    const now = Date.now();
    for (const execution of state.executions.values()) {
      if (TERMINAL.has(execution.status)) continue;
      for (const node of execution.nodes.values()) {
        if (node.result.status === "RUNNING") {
          node.durationEl.textContent = nodeDuration(node.result, now);
        }
      }
      updateExecution(state, execution);
    }
  }

  // --- the WebSocket ---------------------------------------------------------------------

  function socketUrl() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + window.location.host + (root.dataset.wsPath || "/ws");
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  function subscribe(graphId) {
    const state = graphState(graphId);
    const data = { graph_id: graphId };
    if (state.acked) {
      data.since = state.lastSeq; // a resume: everything after what is on the page
    } else {
      data.snapshot = true; // the first time: the current state of the latest execution
    }
    if (send({ method: "subscribe", data: data })) {
      subscribed.add(graphId);
      state.el.dataset.subscription = "pending";
    }
  }

  function unsubscribe(graphId) {
    if (subscribed.delete(graphId)) {
      send({ method: "unsubscribe", data: { graph_id: graphId } });
      graphs.get(graphId).el.dataset.subscription = "none";
    }
  }

  function onSubscribed(graphId, position) {
    const state = graphs.get(graphId);
    if (!state) return;
    state.acked = true;
    if (subscribed.has(graphId)) state.el.dataset.subscription = "active";
    if (!position) return;
    if (position.head < state.lastSeq) {
      // The server's history restarted (another database): what is shown no longer matches.
      resetGraph(state);
      showNotice(state, "The server's history was reset; showing it afresh.");
    } else if (position.truncated) {
      showNotice(
        state,
        "Some updates from while you were away are no longer kept on the server (history now starts at #" +
          position.oldest +
          ")."
      );
    } else {
      showNotice(state, "");
    }
  }

  function onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (error) {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    switch (frame.method) {
      case "execution_event":
        applyEvent(frame.channel, frame.data, frame.seq);
        break;
      case "subscribe":
        if (frame.success) onSubscribed(frame.channel, frame.data);
        break;
      case "error": {
        const state = frame.channel ? graphs.get(frame.channel) : graphs.get(current);
        if (state) showNotice(state, "The server said: " + frame.error);
        break;
      }
      default:
        break; // heartbeat replies, unsubscribe acknowledgements
    }
  }

  function startHeartbeat() {
    stopHeartbeat();
    heartbeatTimer = window.setInterval(function () {
      if (!send({ method: "heartbeat", data: "ping" })) return;
      if (pongTimer === null) {
        // No frame at all within the timeout: the connection is dead without having closed.
        pongTimer = window.setTimeout(function () {
          pongTimer = null;
          abandon(socket);
        }, HEARTBEAT_TIMEOUT_MS);
      }
    }, HEARTBEAT_EVERY_MS);
  }

  function stopHeartbeat() {
    window.clearInterval(heartbeatTimer);
    window.clearTimeout(pongTimer);
    heartbeatTimer = null;
    pongTimer = null;
  }

  function connect() {
    window.clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (socket || gaveUp) return;
    setConnection(attempt === 0 ? "connecting" : "reconnecting", attempt ? "attempt " + (attempt + 1) : "");
    let ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch (error) {
      scheduleReconnect();
      return;
    }
    socket = ws;
    subscribed = new Set();
    ws.addEventListener("open", function () {
      if (socket !== ws) return;
      attempt = 0;
      setConnection("connected");
      startHeartbeat();
      if (current) subscribe(current);
    });
    ws.addEventListener("message", function (event) {
      if (socket !== ws) return;
      window.clearTimeout(pongTimer); // anything heard proves the connection alive
      pongTimer = null;
      onFrame(event.data);
    });
    ws.addEventListener("close", function (event) {
      if (socket !== ws) return;
      lost(event.code);
    });
  }

  /** Give up on a socket that stopped answering, and reconnect. */
  function abandon(ws) {
    if (!ws || socket !== ws) return;
    lost(1006);
    try {
      ws.close();
    } catch (error) {
      /* already closing */
    }
  }

  function lost(code) {
    socket = null;
    subscribed = new Set();
    for (const state of graphs.values()) state.el.dataset.subscription = "none";
    stopHeartbeat();
    if (code === 4001) {
      // No valid session any more (logged out, password changed, session expired).
      gaveUp = true;
      setConnection("offline", "signed out");
      const state = current && graphs.get(current);
      if (state) showNotice(state, "Your session has ended. Reload the page and log in again.");
      return;
    }
    scheduleReconnect();
  }

  function scheduleReconnect() {
    if (reconnectTimer !== null || gaveUp) return;
    // Exponential backoff with "equal jitter": half the delay fixed, half random.
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * Math.pow(2, attempt));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    attempt += 1;
    if (navigator.onLine === false) {
      setConnection("offline", "no network");
    } else {
      setConnection("reconnecting", "next try in " + Math.max(1, Math.round(delay / 1000)) + " s");
    }
    reconnectTimer = window.setTimeout(connect, delay);
  }

  window.addEventListener("online", function () {
    if (!socket && !gaveUp) {
      attempt = 0;
      connect(); // the network is back: no need to wait out the backoff
    }
  });
  window.addEventListener("offline", function () {
    if (!socket) setConnection("offline", "no network");
  });

  // --- choosing a graph ------------------------------------------------------------------

  function selectGraph(graphId, options) {
    options = options || {};
    if (graphId === current) return;
    const previous = current;
    current = graphId;
    const state = graphState(graphId);
    for (const link of graphLinks) {
      if (link.dataset.graphId === graphId) link.setAttribute("aria-current", "true");
      else link.removeAttribute("aria-current");
    }
    for (const other of graphs.values()) other.el.hidden = other !== state;
    panelHeading.textContent = "Executions of " + state.label;
    if (demoForm) {
      // The demo runner's button is on the page only where the server runs demos.
      panelActions.hidden = false;
      demoForm.elements.graph_id.value = graphId;
      demoStatus.textContent = "";
    }
    noticeEl.textContent = state.notice;
    noticeEl.hidden = !state.notice;
    if (options.focus) panelHeading.focus();
    if (options.push) {
      const url = new URL(window.location.href);
      url.searchParams.set("graph", graphId);
      window.history.pushState({ graph: graphId }, "", url);
    }
    if (socket && socket.readyState === WebSocket.OPEN) {
      if (previous) unsubscribe(previous);
      subscribe(graphId);
    } else if (!socket) {
      attempt = 0;
      connect(); // the open handler subscribes to the current graph
    }
  }

  for (const link of graphLinks) {
    link.addEventListener("click", function (event) {
      if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
      event.preventDefault();
      selectGraph(link.dataset.graphId, { focus: true, push: true });
    });
  }

  function graphFromUrl() {
    const wanted = new URL(window.location.href).searchParams.get("graph");
    return graphLinks.some((a) => a.dataset.graphId === wanted) ? wanted : null;
  }

  window.addEventListener("popstate", function () {
    const graphId = graphFromUrl();
    if (graphId) selectGraph(graphId, { focus: false, push: false });
  });

  // --- the demo button -------------------------------------------------------------------

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) return decodeURIComponent(match[1]);
    const field = demoForm.elements.csrfmiddlewaretoken;
    return field ? field.value : "";
  }

  if (demoForm) demoForm.addEventListener("submit", async function (event) {
    event.preventDefault();
    if (!current) return;
    const button = demoForm.querySelector("button[type=submit]");
    button.disabled = true;
    demoStatus.textContent = "Starting a demo run\u2026";
    const body = new FormData(demoForm);
    body.set("graph_id", current);
    try {
      const response = await fetch(demoForm.action, {
        method: "POST",
        body: body,
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
      });
      if (response.status === 202) {
        demoStatus.textContent = "Demo run started: its nodes appear below as they run.";
      } else {
        let reason = "HTTP " + response.status;
        try {
          const answer = await response.json();
          if (answer && answer.error) reason = answer.error;
        } catch (error) {
          /* not JSON: keep the status */
        }
        demoStatus.textContent = "The demo could not start: " + reason;
      }
    } catch (error) {
      demoStatus.textContent = "The demo could not start: the server did not answer.";
    } finally {
      button.disabled = false;
    }
  });

  // --- start -----------------------------------------------------------------------------

  window.setInterval(tick, 1000);
  const initial = graphFromUrl();
  if (initial) selectGraph(initial, { focus: false, push: false });
  else if (graphLinks.length === 1) selectGraph(graphLinks[0].dataset.graphId, { focus: false, push: false });
})();
