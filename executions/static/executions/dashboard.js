/*
 * The executions dashboard: one WebSocket to /ws (the page's session authenticates it), the
 * chosen graph's executions rendered as timelines of nodes, updated live.
 *
 * - First subscription to a graph asks for a snapshot (the current state of its latest
 *   execution); every later one (after a reconnect, or coming back to the graph) asks for
 *   everything `since` the last sequence number seen, so nothing is missed.
 * - Each graph remembers the last `seq` it accounted for and drops anything at or below it,
 *   so nothing is shown twice, whichever connection brought it.
 * - A dropped connection is retried with exponential backoff and jitter.
 * - When the WebSocket cannot open (FALLBACK_AFTER_FAILED_OPENS attempts in a row that never
 *   opened: a proxy that refuses upgrades, say), the graph shown is followed over Server-Sent
 *   Events instead: an EventSource on the graph's `events` URL (the session cookie
 *   authenticates it) from where the page is (from the history's head, for a graph it holds
 *   nothing of), resumed by Last-Event-ID. The WebSocket is still tried now and then (the same
 *   backoff); once it opens and acknowledges the graph's subscription (with `since`), the
 *   EventSource is closed. Both deliver through onFrame.
 * - Any execution of the graph shown can be followed alone ("Follow this run"): the graph's
 *   subscription gives way to AutoGPT's `subscribe_graph_execution` for it (a snapshot first,
 *   `since` on every resume), whose `node_execution_event` frames make the run's timeline and
 *   whose `graph_execution_event` frames its own status, duration, statistics and outputs (the
 *   graph's subscription never carries those). "Back to all runs" unsubscribes and resumes the
 *   graph with `since`. Over Server-Sent Events the run's own stream is followed instead, from
 *   its start (a stream has no snapshot). The run keeps its own last `seq` (its graph's
 *   numbers), so whichever transport brings an event, it is shown once.
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
    TERMINATED: { label: "Terminated", icon: "\u25A0" }, // ■
  };
  const UNKNOWN_STATUS = { label: "Unknown", icon: "?" };
  const TERMINAL = new Set(["COMPLETED", "FAILED", "INCOMPLETE", "TERMINATED"]);

  const BACKOFF_BASE_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const HEARTBEAT_EVERY_MS = 25000;
  const HEARTBEAT_TIMEOUT_MS = 10000;
  const MAX_EXECUTIONS_SHOWN = 50;
  const FALLBACK_AFTER_FAILED_OPENS = 2; // WebSocket attempts in a row that never opened
  const STREAM_RECONNECTS_ALLOWED = 2; // EventSource's own reconnects in a row, then ours
  const LOCATE_TIMEOUT_MS = 10000; // the history request made before each stream opens
  const STREAM_REFUSALS_ALLOWED = 3; // stream openings in a row the server refused, then none
  const EXECUTION_ID_PLACEHOLDER = "GRAPH_EXEC_ID"; // in data-execution-events-url (views.py)
  const RUN_CHANNEL = "|graph_exec#"; // a run's channel: "<user id>|graph_exec#<graph_exec_id>"
  const STREAM_EVENTS = ["execution_event", "node_execution_event", "graph_execution_event"];
  // A run's statistics shown beside its status: [key, label, shown when, format].
  const RUN_STATS = [
    ["node_exec_count", "Nodes run", (v) => typeof v === "number"],
    ["node_error_count", "Node errors", (v) => typeof v === "number"],
    ["duration", "Run time", (v) => typeof v === "number" && v > 0, (v) => formatDuration(v * 1000)],
    ["cost", "Cost", (v) => typeof v === "number" && v > 0],
    ["error", "Error", (v) => typeof v === "string" && v !== ""],
    ["activity_status", "Activity", (v) => typeof v === "string" && v !== ""],
  ];

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

  // A feed is what one subscription or stream shows: a graph (kind "graph", by graph id) or the
  // run followed alone in it (kind "run", by graph_exec_id): {kind, id, lastSeq, positioned,
  // eventsUrl, historyUrl, executions: Map, el, ...}.
  /** graph id -> the graph's feed */
  const graphs = new Map();
  let current = null; // the graph shown
  let run = null; // the run of that graph followed alone (its feed), or null: the graph is shown
  let socket = null; // the live WebSocket, or null
  let subscribed = new Map(); // graph id -> "pending" or "active" on the current socket
  let runSubscribed = null; // the run's subscription on the current socket: "pending", "active"
  let attempt = 0; // reconnect attempts since the last successful open
  let reconnectTimer = null;
  let heartbeatTimer = null;
  let pongTimer = null;
  let socketStatus = { state: "idle", detail: "" }; // what the WebSocket is doing
  let failedOpens = 0; // WebSocket attempts in a row that closed (or failed) before opening
  let fallback = false; // the WebSocket cannot open: follow the graph shown over Server-Sent Events
  let stream = null; // the Server-Sent Events stream: {feed, source, open, errors, attempt, ...}
  let everConnected = false; // some connection was live once: a new attempt is a reconnect
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

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch (error) {
      return null;
    }
  }

  // --- the connection indicator ----------------------------------------------------------

  const CONNECTION_TEXT = {
    idle: "Not connected",
    connecting: "Connecting\u2026",
    connected: "Connected",
    reconnecting: "Reconnecting\u2026",
    offline: "Offline",
  };

  function setConnection(state, detail, transport) {
    const text = CONNECTION_TEXT[state] + (detail ? " (" + detail + ")" : "");
    connectionEl.dataset.transport = transport || ""; // "websocket" or "sse" while one is live
    if (connectionEl.dataset.state === state && connectionText.textContent === text) return;
    connectionEl.dataset.state = state;
    connectionText.textContent = text;
  }

  /** The transport that is live (the WebSocket first), else what the connections are doing. */
  function showConnection() {
    if (gaveUp) setConnection("offline", "signed out");
    else if (socket && socket.readyState === WebSocket.OPEN) setConnection("connected", "WebSocket", "websocket");
    else if (stream && stream.open) setConnection("connected", "Server-Sent Events", "sse");
    else if (navigator.onLine === false) setConnection("offline", "no network");
    else if (stream) setConnection(everConnected ? "reconnecting" : "connecting", "Server-Sent Events");
    else setConnection(socketStatus.state, socketStatus.detail);
  }

  function setSocketStatus(state, detail) {
    socketStatus = { state: state, detail: detail || "" };
    showConnection();
  }

  // --- per-graph state and rendering -----------------------------------------------------

  function linkOf(graphId) {
    return graphLinks.find((a) => a.dataset.graphId === graphId) || null;
  }

  function labelOf(graphId) {
    const link = linkOf(graphId);
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
    const link = linkOf(graphId);
    state = {
      kind: "graph",
      id: graphId,
      label: labelOf(graphId),
      lastSeq: 0, // the number the page is up to: anything at or below it is dropped
      positioned: false, // lastSeq is a place in the graph's history (acknowledged or located)
      requestedSince: undefined, // the `since` of the latest WebSocket subscription
      eventsUrl: (link && link.dataset.eventsUrl) || "", // its Server-Sent Events stream
      historyUrl: (link && link.dataset.historyUrl) || "", // its history (where a stream starts)
      executions: new Map(),
      el: section,
      listEl: list,
      emptyEl: empty,
      notice: "",
    };
    // What tests and curious people can read off the page: the subscription (on either
    // transport), the number the page is up to, and how many events were rendered (each once).
    section.dataset.subscription = "none";
    section.dataset.lastSeq = "0";
    section.dataset.applied = "0";
    graphs.set(graphId, state);
    return state;
  }

  /** The run followed alone in the graph shown, else that graph; null before one is chosen. */
  function shownFeed() {
    return run || (current !== null && graphs.get(current)) || null;
  }

  function resetFeed(feed) {
    feed.lastSeq = 0;
    feed.el.dataset.lastSeq = "0";
    feed.el.dataset.applied = "0";
    feed.executions.clear();
    feed.listEl.replaceChildren();
    feed.emptyEl.hidden = false;
  }

  function showNotice(feed, message) {
    feed.notice = message;
    if (feed === shownFeed()) {
      noticeEl.textContent = message;
      noticeEl.hidden = !message;
    }
  }

  /** An error frame of the WebSocket, or an error event of the stream. */
  function serverSaid(state, error) {
    showNotice(state, "The server said: " + error);
  }

  /** The feed's subscription on the current socket: "pending", "active" or undefined. */
  function onSocket(feed) {
    if (feed.kind === "run") return (feed === run && runSubscribed) || undefined;
    return subscribed.get(feed.id);
  }

  /** "active" when either transport brings the feed's events, "pending" while one sets up. */
  function showSubscription(feed) {
    const bySocket = onSocket(feed);
    const byStream = stream && stream.feed === feed ? (stream.open ? "active" : "pending") : undefined;
    feed.el.dataset.subscription =
      bySocket === "active" || byStream === "active" ? "active" : bySocket || byStream || "none";
  }

  function showSubscriptions() {
    for (const state of graphs.values()) showSubscription(state);
    if (run) showSubscription(run);
  }

  function createExecution(state, result) {
    const article = el("article", "execution");
    article.dataset.graphExecId = result.graph_exec_id;
    const head = el("header", "execution-head");
    const title = el("h3", "execution-title");
    title.append("Execution ", el("code", "execution-id", result.graph_exec_id));
    const badge = makeBadge("QUEUED");
    const summary = el("p", "execution-summary");
    head.append(title, badge);
    if (state.kind === "graph") {
      const follow = el("button", "link-button follow-run", "Follow this run");
      follow.type = "button";
      follow.append(el("span", "visually-hidden", " " + result.graph_exec_id));
      follow.addEventListener("click", function () {
        followRun(result.graph_exec_id, { focus: true, push: true });
      });
      head.append(follow);
    }
    head.append(summary);
    const timeline = el("ol", "timeline");
    timeline.setAttribute("aria-label", "Nodes of execution " + result.graph_exec_id);
    const details = state.kind === "run" ? createRunDetails() : null;
    if (details) article.append(head, details.el, timeline);
    else article.append(head, timeline);
    const execution = {
      id: result.graph_exec_id,
      version: result.graph_version,
      el: article,
      badge: badge,
      summaryEl: summary,
      timelineEl: timeline,
      nodes: new Map(),
      status: null,
      details: details, // a followed run's own status, statistics and outputs
      runEvent: null, // its latest graph_execution_event
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

  /** Where a followed run shows what its graph_execution_event says (hidden until one comes). */
  function createRunDetails() {
    const box = el("div", "run-details");
    box.hidden = true;
    const facts = el("dl", "run-facts");
    const outputs = el("div", "run-outputs");
    const data = el("details", "run-data");
    const inputs = el("pre", "run-inputs");
    const stats = el("pre", "run-stats");
    data.append(
      el("summary", null, "Inputs and statistics"),
      el("h4", null, "Inputs"),
      inputs,
      el("h4", null, "Statistics"),
      stats
    );
    box.append(facts, el("h4", null, "Outputs"), outputs, data);
    return { el: box, factsEl: facts, outputsEl: outputs, inputsEl: inputs, statsEl: stats };
  }

  function renderRun(execution, event) {
    const details = execution.details;
    details.el.hidden = false;
    const terminal = TERMINAL.has(event.status);
    const facts = [];
    const started = parseTime(event.started_at);
    if (started !== null) facts.push(["Started", formatClock(started)]);
    const ended = parseTime(event.ended_at);
    if (terminal && ended !== null) facts.push(["Ended", formatClock(ended)]);
    const stats = event.stats && typeof event.stats === "object" ? event.stats : {};
    for (const [key, label, shown, format] of RUN_STATS) {
      if (shown(stats[key])) facts.push([label, format ? format(stats[key]) : String(stats[key])]);
    }
    details.factsEl.replaceChildren();
    for (const [label, value] of facts) {
      details.factsEl.append(el("dt", null, label), el("dd", null, value));
    }
    const outputs = event.outputs && typeof event.outputs === "object" ? Object.entries(event.outputs) : [];
    if (outputs.length === 0) {
      details.outputsEl.replaceChildren(el("p", "empty", terminal ? "No outputs." : "No outputs yet."));
    } else {
      const list = el("dl", "run-output-list");
      for (const [name, values] of outputs) {
        const shownValues = Array.isArray(values)
          ? values.map((v) => (typeof v === "string" ? v : pretty(v))).join("\n")
          : pretty(values);
        const value = el("dd");
        value.append(el("pre", "run-output", shownValues));
        list.append(el("dt", "run-output-name", name), value);
      }
      details.outputsEl.replaceChildren(list);
    }
    details.inputsEl.textContent = pretty(event.inputs);
    details.statsEl.textContent = pretty(event.stats);
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

  /** A followed run's start, and its end once it has ended, as its own event says. */
  function runTimes(event) {
    return {
      start: parseTime(event.started_at),
      end: TERMINAL.has(event.status) ? parseTime(event.ended_at) : null,
    };
  }

  function updateExecution(state, execution) {
    // A followed run's own event says its status and times; else they come from its nodes.
    const event = execution.runEvent;
    const status = event ? event.status : executionStatus(execution);
    const counts = {};
    for (const node of execution.nodes.values()) {
      counts[node.result.status] = (counts[node.result.status] || 0) + 1;
    }
    const parts = [execution.nodes.size + (execution.nodes.size === 1 ? " node" : " nodes")];
    for (const key of Object.keys(STATUSES)) {
      if (counts[key]) parts.push(counts[key] + " " + STATUSES[key].label.toLowerCase());
    }
    const times = event ? runTimes(event) : executionTimes(execution);
    if (times.start !== null) {
      const finished = TERMINAL.has(status) && times.end !== null;
      const until = finished ? times.end : Date.now();
      parts.push((finished ? "took " : "running for ") + formatDuration(until - times.start));
    }
    execution.summaryEl.textContent = parts.join(" \u00b7 ");
    execution.el.dataset.status = status;
    setBadge(execution.badge, status);
    if (execution.status !== null && execution.status !== status && state === shownFeed()) {
      announce("Execution " + execution.id + ": " + statusInfo(status).label.toLowerCase());
    }
    execution.status = status;
  }

  /** Whether a feed takes an event: not one it has seen (its number at or below lastSeq). */
  function accept(feed, seq) {
    if (typeof seq === "number") {
      if (seq <= feed.lastSeq) return false; // seen already
      feed.lastSeq = seq;
      feed.el.dataset.lastSeq = String(seq);
    }
    feed.el.dataset.applied = String(Number(feed.el.dataset.applied) + 1);
    return true;
  }

  /** A node's result (execution_event) or node event (node_execution_event), on any feed. */
  function applyEvent(feed, result, seq) {
    if (!feed || !result || typeof result !== "object") return;
    if (!accept(feed, seq)) return;
    let execution = feed.executions.get(result.graph_exec_id);
    if (!execution) execution = createExecution(feed, result);
    let node = execution.nodes.get(result.node_exec_id);
    if (!node) node = createNode(execution, result);
    updateNode(node, result, seq);
    updateExecution(feed, execution);
  }

  /** A followed run's graph_execution_event: its own status, times, statistics and outputs. */
  function applyRunEvent(feed, event, seq) {
    if (!feed || !event || typeof event !== "object") return;
    if (!accept(feed, seq)) return;
    let execution = feed.executions.get(event.id);
    if (!execution) {
      execution = createExecution(feed, { graph_exec_id: event.id, graph_version: event.graph_version });
    }
    execution.runEvent = event;
    renderRun(execution, event);
    updateExecution(feed, execution);
  }

  /** Running nodes and unfinished executions show a duration that grows: refresh it. */
  function tick() {
    const state = shownFeed();
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
    if (state.positioned) {
      data.since = state.lastSeq; // a resume: everything after what the page holds
    } else {
      data.snapshot = true; // the first time: the current state of the latest execution
    }
    if (send({ method: "subscribe", data: data })) {
      subscribed.set(graphId, "pending");
      state.requestedSince = data.since; // what the answer's position is about
      showSubscription(state);
    }
  }

  function unsubscribe(graphId) {
    if (subscribed.delete(graphId)) {
      send({ method: "unsubscribe", data: { graph_id: graphId } });
      showSubscription(graphs.get(graphId));
    }
  }

  /** AutoGPT's subscription to one execution: a snapshot the first time, then `since`. */
  function subscribeRun(feed) {
    const data = { graph_exec_id: feed.id };
    if (feed.positioned) {
      data.since = feed.lastSeq;
    } else {
      data.snapshot = true; // its nodes' latest results and its own latest event
    }
    if (send({ method: "subscribe_graph_execution", data: data })) {
      runSubscribed = "pending";
      feed.requestedSince = data.since;
      showSubscription(feed);
    }
  }

  /** Subscribe to what is shown: the run followed, else the graph. */
  function subscribeShown() {
    if (run) subscribeRun(run);
    else if (current !== null) subscribe(current);
  }

  function isRunChannel(channel, feed) {
    return typeof channel === "string" && channel.endsWith(RUN_CHANNEL + feed.id);
  }

  /**
   * The followed run, for a frame of it that one of its live subscriptions brought: its stream
   * (`streamFeed`, the feed a stream event came for), or the socket once the subscription is
   * acknowledged (a frame before that belongs to an earlier subscription, and a snapshot that
   * follows may hold older numbers than it).
   */
  function runOf(channel, graphExecId, streamFeed) {
    if (!run || graphExecId !== run.id || !isRunChannel(channel, run)) return null;
    if (streamFeed !== undefined) return streamFeed === run ? run : null;
    return runSubscribed === "active" ? run : null;
  }

  /**
   * Where the server's history of a graph stands, for a subscription or a stream that asked for
   * what follows `since`. Compared with `since`, not with lastSeq: the other transport may have
   * moved the page on meanwhile. A run asked from its start (`since` 0) has missed nothing
   * while away, whatever retention removed before.
   */
  function onPosition(state, position, since) {
    if (typeof since === "number" && position.head < since) {
      // The server's history restarted (another database): what is shown no longer matches.
      resetFeed(state);
      showNotice(state, "The server's history was reset; showing it afresh.");
    } else if (position.truncated && !(state.kind === "run" && since === 0)) {
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

  function onSubscribed(graphId, position) {
    const state = graphs.get(graphId);
    if (!state) return;
    state.positioned = true;
    if (subscribed.has(graphId)) {
      subscribed.set(graphId, "active");
      showSubscription(state);
    }
    if (position) onPosition(state, position, state.requestedSince);
    // From here the socket brings everything after what the page holds: the stream can go.
    if (stream && stream.feed === state && subscribed.get(graphId) === "active") stopStream();
  }

  function onRunSubscribed(channel, position) {
    const feed = run;
    if (!feed || runSubscribed === null || !isRunChannel(channel, feed)) return;
    feed.positioned = true;
    runSubscribed = "active";
    showSubscription(feed);
    if (position) onPosition(feed, position, feed.requestedSince);
    if (stream && stream.feed === feed) stopStream(); // the socket brings the rest
  }

  /**
   * One frame's text: from the WebSocket, or an event's data from the stream, with its id and
   * the feed the stream is for. Either way, the same functions render it.
   */
  function onFrame(text, seq, streamFeed) {
    const frame = parseJson(text);
    if (!frame || typeof frame !== "object") return;
    const number = seq === undefined ? frame.seq : seq;
    const data = frame.data && typeof frame.data === "object" ? frame.data : {};
    switch (frame.method) {
      case "execution_event":
        applyEvent(graphs.get(frame.channel), frame.data, number);
        break;
      case "node_execution_event":
        applyEvent(runOf(frame.channel, data.graph_exec_id, streamFeed), frame.data, number);
        break;
      case "graph_execution_event":
        applyRunEvent(runOf(frame.channel, data.id, streamFeed), frame.data, number);
        break;
      case "subscribe":
        if (frame.success) onSubscribed(frame.channel, frame.data);
        break;
      case "subscribe_graph_execution":
        if (frame.success) onRunSubscribed(frame.channel, frame.data);
        break;
      case "error": {
        if (run && isRunChannel(frame.channel, run)) {
          // Refused ("Graph execution not found.", a limit): not followed on this socket.
          runSubscribed = null;
          showSubscription(run);
          serverSaid(run, frame.error);
          break;
        }
        const state = frame.channel ? graphs.get(frame.channel) : shownFeed();
        if (state) serverSaid(state, frame.error);
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
    setSocketStatus(attempt === 0 ? "connecting" : "reconnecting", attempt ? "attempt " + (attempt + 1) : "");
    let ws;
    try {
      ws = new WebSocket(socketUrl());
    } catch (error) {
      failedToOpen();
      scheduleReconnect();
      return;
    }
    socket = ws;
    subscribed = new Map();
    runSubscribed = null;
    let opened = false;
    ws.addEventListener("open", function () {
      if (socket !== ws) return;
      opened = true;
      attempt = 0;
      failedOpens = 0;
      fallback = false; // a stream still open stays until the socket has its graph (onSubscribed)
      everConnected = true;
      startHeartbeat();
      showConnection();
      subscribeShown();
    });
    ws.addEventListener("message", function (event) {
      if (socket !== ws) return;
      window.clearTimeout(pongTimer); // anything heard proves the connection alive
      pongTimer = null;
      onFrame(event.data);
    });
    ws.addEventListener("close", function (event) {
      if (socket !== ws) return;
      if (!opened) failedToOpen();
      lost(event.code);
    });
  }

  /** One more WebSocket attempt that never opened; after a few in a row, Server-Sent Events. */
  function failedToOpen() {
    failedOpens += 1;
    if (failedOpens < FALLBACK_AFTER_FAILED_OPENS || fallback || gaveUp) return;
    fallback = true;
    follow(shownFeed());
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
    subscribed = new Map();
    runSubscribed = null;
    showSubscriptions();
    stopHeartbeat();
    if (code === 4001) {
      signedOut(); // no valid session any more (logged out, password changed, session expired)
      return;
    }
    scheduleReconnect();
  }

  /** The session ended (a 4001 close, or a 401 over HTTP): stop every connection for good. */
  function signedOut() {
    gaveUp = true;
    window.clearTimeout(reconnectTimer);
    reconnectTimer = null;
    stopStream();
    if (socket) {
      const ws = socket;
      socket = null; // its close event is ignored from here
      subscribed = new Map();
      runSubscribed = null;
      stopHeartbeat();
      try {
        ws.close();
      } catch (error) {
        /* already closing */
      }
    }
    showSubscriptions();
    showConnection();
    const state = shownFeed();
    if (state) showNotice(state, "Your session has ended. Reload the page and log in again.");
  }

  /** Exponential backoff with "equal jitter": half the delay fixed, half random. */
  function backoff(attempts) {
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * Math.pow(2, Math.min(attempts, 16)));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  function scheduleReconnect() {
    if (reconnectTimer !== null || gaveUp) return;
    const delay = backoff(attempt);
    attempt += 1;
    setSocketStatus("reconnecting", "next try in " + Math.max(1, Math.round(delay / 1000)) + " s");
    reconnectTimer = window.setTimeout(connect, delay);
  }

  window.addEventListener("online", function () {
    if (gaveUp) return;
    // The network is back: no need to wait out the backoffs.
    if (!socket) {
      attempt = 0;
      connect();
    }
    if (stream && stream.timer !== null) {
      window.clearTimeout(stream.timer);
      stream.timer = null;
      stream.attempt = 0;
      locate(stream);
    }
    showConnection();
  });
  window.addEventListener("offline", showConnection);

  // --- Server-Sent Events, while the WebSocket cannot open ---------------------------------

  /** Follow a feed over Server-Sent Events: one stream, for what is shown. */
  function follow(feed) {
    if (gaveUp || !feed || (stream && stream.feed === feed)) return;
    stopStream();
    if (!feed.eventsUrl || !feed.historyUrl) {
      showNotice(
        feed,
        "Live updates of this " + (feed.kind === "run" ? "run" : "graph") + " need the WebSocket, which cannot connect."
      );
      return;
    }
    stream = {
      feed: feed,
      source: null, // the EventSource, while one is open or reconnecting
      open: false,
      errors: 0, // errors in a row since it last opened (the browser reconnects by itself)
      attempt: 0, // our own reopenings since it last opened, for the backoff
      refusals: 0, // openings in a row the server answered with something else than a stream
      timer: null,
      abort: null, // the history request in flight
    };
    showSubscription(feed);
    showConnection();
    locate(stream);
  }

  function stopStream() {
    const entry = stream;
    if (!entry) return;
    stream = null;
    window.clearTimeout(entry.timer);
    if (entry.abort) entry.abort.abort();
    if (entry.source) entry.source.close();
    showSubscription(entry.feed);
    showConnection();
  }

  /**
   * Ask the graph's history where it stands before each (re)opening of the stream. A page that
   * holds nothing of the graph starts after its head (live from now on, and a reconnect resumes
   * from there); a run starts from its beginning whatever the head. An answer other than 200
   * says why a stream would fail: 401, the session ended; 403 and the like, the graph cannot be
   * followed; anything else is tried again later.
   */
  async function locate(entry) {
    const feed = entry.feed;
    const controller = new AbortController();
    entry.abort = controller;
    const timeout = window.setTimeout(function () {
      controller.abort();
    }, LOCATE_TIMEOUT_MS);
    let status = 0;
    let answer = null;
    try {
      const response = await fetch(feed.historyUrl + "?limit=1&since=" + feed.lastSeq, {
        credentials: "same-origin",
        cache: "no-store",
        headers: { Accept: "application/json" },
        signal: controller.signal,
      });
      status = response.status;
      answer = await response.json();
    } catch (error) {
      /* no answer (status 0), or not JSON */
    } finally {
      window.clearTimeout(timeout);
    }
    if (stream !== entry) return; // stopped or replaced meanwhile
    entry.abort = null;
    if (onSocket(feed) !== undefined) {
      stopStream(); // the WebSocket opened meanwhile and has the feed
      return;
    }
    if (status === 401) {
      signedOut();
      return;
    }
    if (status >= 400 && status < 500 && status !== 408 && status !== 429) {
      serverSaid(feed, (answer && answer.error) || "HTTP " + status);
      stopStream();
      return;
    }
    if (status !== 200 || !answer || typeof answer.head !== "number") {
      retryStream(entry);
      return;
    }
    if (feed.kind === "graph" && !feed.positioned) {
      feed.positioned = true;
      if (answer.head > feed.lastSeq) {
        feed.lastSeq = answer.head;
        feed.el.dataset.lastSeq = String(answer.head);
      }
    }
    openSource(entry);
  }

  function openSource(entry) {
    const feed = entry.feed;
    let source;
    try {
      // Same origin: the session cookie goes along. `since` for this opening only: the
      // browser's own reconnects send Last-Event-ID, the last id it received.
      source = new EventSource(feed.eventsUrl + "?since=" + feed.lastSeq);
    } catch (error) {
      retryStream(entry);
      return;
    }
    entry.source = source;
    source.addEventListener("open", function () {
      if (entry.source !== source) return;
      entry.open = true;
      entry.errors = 0;
      entry.attempt = 0;
      entry.refusals = 0;
      everConnected = true;
      // A run's stream replays it from lastSeq in order: a socket may resume from there.
      if (feed.kind === "run") feed.positioned = true;
      showSubscription(feed);
      showConnection();
    });
    for (const name of STREAM_EVENTS) {
      source.addEventListener(name, function (event) {
        if (entry.source !== source) return;
        onFrame(event.data, /^\d+$/.test(event.lastEventId) ? Number(event.lastEventId) : undefined, feed);
      });
    }
    source.addEventListener("gap", function (event) {
      if (entry.source !== source) return;
      const gap = parseJson(event.data);
      if (gap && typeof gap.head === "number" && typeof gap.oldest === "number") {
        onPosition(feed, { head: gap.head, oldest: gap.oldest, truncated: true }, gap.requested_since);
      }
    });
    source.addEventListener("error", function (event) {
      if (entry.source !== source) return;
      if (typeof event.data === "string") {
        // The server's error event; the stream ends after it and is resumed (a revoked
        // session is then refused: 401).
        const error = parseJson(event.data);
        serverSaid(feed, error && typeof error.error === "string" ? error.error : event.data);
        return;
      }
      // The connection failed or ended. The browser reconnects by itself (with Last-Event-ID)
      // unless the server refused the stream (CLOSED); after a few failures in a row, or that,
      // the stream is reopened with a backoff, the history asked first. Refused a few times in
      // a row although the history answered (a run the server no longer has, say), it stops.
      entry.open = false;
      entry.errors += 1;
      if (source.readyState === EventSource.CLOSED) {
        entry.refusals += 1;
        if (entry.refusals >= STREAM_REFUSALS_ALLOWED) {
          showNotice(
            feed,
            "The server refused to stream this " + (feed.kind === "run" ? "run" : "graph") +
              "; live updates resume when the WebSocket connects."
          );
          stopStream();
          return;
        }
        retryStream(entry);
      } else if (entry.errors > STREAM_RECONNECTS_ALLOWED) {
        retryStream(entry);
      } else {
        showSubscription(feed);
        showConnection();
      }
    });
  }

  function retryStream(entry) {
    if (entry.source) entry.source.close();
    entry.source = null;
    entry.open = false;
    entry.errors = 0;
    const delay = backoff(entry.attempt);
    entry.attempt += 1;
    window.clearTimeout(entry.timer);
    entry.timer = window.setTimeout(function () {
      entry.timer = null;
      if (stream === entry) locate(entry);
    }, delay);
    showSubscription(entry.feed);
    showConnection();
  }

  // --- choosing a graph, and a run of it -------------------------------------------------

  /** The heading, the notice and the one section of what is shown. */
  function showPanel() {
    const state = graphs.get(current);
    for (const other of graphs.values()) other.el.hidden = run !== null || other !== state;
    if (run) run.el.hidden = false;
    panelHeading.textContent = run ? "Run " + run.id + " of " + state.label : "Executions of " + state.label;
    const feed = shownFeed();
    noticeEl.textContent = feed.notice;
    noticeEl.hidden = !feed.notice;
  }

  /** Follow what is shown on the socket if it is open, else over the stream in fallback mode,
   *  else once the socket opens (its open handler subscribes). */
  function watchShown() {
    const feed = shownFeed();
    if (stream && stream.feed !== feed) stopStream();
    if (socket && socket.readyState === WebSocket.OPEN) {
      subscribeShown();
    } else if (fallback) {
      follow(feed); // the WebSocket is still tried on its backoff
    } else if (!socket) {
      attempt = 0;
      connect();
    }
  }

  function pushPlace(graphId, graphExecId) {
    const url = new URL(window.location.href);
    url.searchParams.set("graph", graphId);
    if (graphExecId === null) url.searchParams.delete("run");
    else url.searchParams.set("run", graphExecId);
    window.history.pushState({ graph: graphId, run: graphExecId }, "", url);
  }

  function selectGraph(graphId, options) {
    options = options || {};
    if (graphId === current) return;
    leaveRun();
    const previous = current;
    current = graphId;
    graphState(graphId);
    for (const link of graphLinks) {
      if (link.dataset.graphId === graphId) link.setAttribute("aria-current", "true");
      else link.removeAttribute("aria-current");
    }
    showPanel();
    if (demoForm) {
      // The demo runner's button is on the page only where the server runs demos.
      panelActions.hidden = false;
      demoForm.elements.graph_id.value = graphId;
      demoStatus.textContent = "";
    }
    if (options.focus) panelHeading.focus();
    if (options.push) pushPlace(graphId, null);
    if (previous !== null) unsubscribe(previous);
    watchShown();
  }

  /** A run's feed and its section: the way back, then the run's one execution. */
  function runState(graph, graphExecId) {
    const section = el("section", "run-view");
    section.dataset.graphId = graph.id;
    section.dataset.graphExecId = graphExecId;
    section.dataset.subscription = "none";
    section.dataset.lastSeq = "0";
    section.dataset.applied = "0";
    const back = el("button", "link-button run-back");
    back.type = "button";
    const arrow = el("span", null, "\u2190 ");
    arrow.setAttribute("aria-hidden", "true");
    back.append(arrow, "Back to all runs");
    back.addEventListener("click", function () {
      backToAllRuns({ focus: true, push: true });
    });
    const nav = el("p", "run-nav");
    nav.append(back);
    const empty = el("p", "empty", "Waiting for this run\u2019s events\u2026");
    const list = el("div", "execution-list");
    section.append(nav, empty, list);
    executionsEl.append(section);
    return {
      kind: "run",
      id: graphExecId,
      graphId: graph.id,
      lastSeq: 0, // the graph's number the run is up to (its events only)
      positioned: false,
      requestedSince: undefined,
      eventsUrl: executionEventsUrl(graphExecId),
      historyUrl: graph.historyUrl, // asked before its stream opens, as for the graph
      executions: new Map(),
      el: section,
      listEl: list,
      emptyEl: empty,
      notice: "",
    };
  }

  /** The run's own Server-Sent Events URL, or "" where the page has none to offer. */
  function executionEventsUrl(graphExecId) {
    const template = root.dataset.executionEventsUrl || "";
    const at = template.lastIndexOf(EXECUTION_ID_PLACEHOLDER);
    // A browser resolves "." and ".." path segments away before sending: no URL reaches those.
    if (at < 0 || graphExecId === "." || graphExecId === "..") return "";
    return (
      template.slice(0, at) +
      encodeURIComponent(graphExecId) +
      template.slice(at + EXECUTION_ID_PLACEHOLDER.length)
    );
  }

  /** Show one execution of the graph shown alone, following it with its own subscription. */
  function followRun(graphExecId, options) {
    options = options || {};
    const state = current !== null && graphs.get(current);
    if (!state || gaveUp || (run && run.id === graphExecId)) return;
    leaveRun();
    unsubscribe(current); // the run's subscription takes the graph's place
    run = runState(state, graphExecId);
    showPanel();
    if (options.focus) panelHeading.focus();
    if (options.push) pushPlace(current, graphExecId);
    watchShown();
  }

  /** Stop following the run: its subscription or stream ends, its section goes. */
  function leaveRun() {
    const feed = run;
    if (!feed) return;
    if (runSubscribed !== null) send({ method: "unsubscribe", data: { graph_exec_id: feed.id } });
    runSubscribed = null;
    run = null;
    if (stream && stream.feed === feed) stopStream();
    feed.el.remove();
  }

  /** Back to the graph's executions, resumed from where the graph was (`since`). */
  function backToAllRuns(options) {
    options = options || {};
    const feed = run;
    if (!feed) return;
    leaveRun();
    showPanel();
    if (options.push) pushPlace(current, null);
    if (options.focus) {
      const execution = graphs.get(current).executions.get(feed.id);
      const button = execution && execution.el.querySelector(".follow-run");
      (button || panelHeading).focus();
    }
    watchShown();
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

  function runFromUrl() {
    return new URL(window.location.href).searchParams.get("run") || null;
  }

  window.addEventListener("popstate", function () {
    const graphId = graphFromUrl();
    if (!graphId) return;
    selectGraph(graphId, { focus: false, push: false });
    const graphExecId = runFromUrl();
    if (graphExecId) followRun(graphExecId, { focus: false, push: false });
    else backToAllRuns({ focus: false, push: false });
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
  const initial = graphFromUrl() || (graphLinks.length === 1 ? graphLinks[0].dataset.graphId : null);
  if (initial !== null) {
    selectGraph(initial, { focus: false, push: false });
    const initialRun = runFromUrl();
    if (initialRun) followRun(initialRun, { focus: false, push: false });
  }
})();
