// The live dashboard (docs/dashboard.md). Plain script, no build step: it uses the
// vendored graphql-ws UMD build (window.graphqlWs) and uPlot (window.uPlot).
//
// Reads go over POST /graphql; everything live comes over one graphql-transport-ws
// socket. After a reconnect every subscription is started again, channel
// subscriptions from the last offset and epoch they delivered (`since`), and every
// panel says it is stale from the moment the socket closes until fresh data arrives.
(() => {
  "use strict";

  const TOKEN_KEY = "edumatrix.dashboard.token";
  const HISTORY_MINUTES = 60;
  const TOP_TYPES = 5;
  const MANAGERS = ["ADMIN", "SERVICE"];
  const OPEN_ALERTS = 100; // the newest open alerts listed (Query.alertPage)
  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    me: null,
    institution: null,
    watched: [], // [{name, label}]: presence and announcements
    alertsChannel: null,
    client: null,
    generation: 0, // bumped on every (re)connect; older callbacks do nothing
    disposers: [],
    positions: new Map(), // channel -> {offset, epoch} of the last event handled
    presence: new Map(), // channel -> members
    alerts: new Map(), // id -> alert (with rollCall when we may see it)
    alertsRead: new Set(), // ids read with Query.alert at least once
    rollCalls: new Map(), // id -> generation of its alertRollCall subscription
    announcements: new Map(), // id -> announcement
    chart: null,
    lastFresh: new Map(), // panel id -> Date
    live: false,
  };

  // ---- small helpers ---------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "");
  const isManager = () => state.me && MANAGERS.includes(state.me.role);

  // Runs `fn` at most once per `ms`, never twice at once; a call while it runs or
  // waits is folded into one more run afterwards (trailing).
  function throttle(fn, ms) {
    let timer = null;
    let running = false;
    let again = false;
    async function run() {
      timer = null;
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        await fn();
      } catch (error) {
        console.warn("dashboard:", error);
      } finally {
        running = false;
        if (again) {
          again = false;
          schedule();
        }
      }
    }
    function schedule() {
      if (timer === null) timer = setTimeout(run, ms);
    }
    return schedule;
  }

  async function gql(query, variables = {}) {
    const response = await fetch("/graphql", {
      method: "POST",
      headers: {
        "content-type": "application/json",
        accept: "application/graphql-response+json, application/json",
        authorization: `Bearer ${state.token}`,
      },
      body: JSON.stringify({ query, variables }),
    });
    const body = await response.json();
    if (!body || typeof body !== "object") throw new Error(`HTTP ${response.status}`);
    return body;
  }

  // Reads once connected go over the socket: one authentication for the page's
  // life. Over HTTP every read is a request, and so an auth.login event, which
  // moves liveMetrics, which would make the page read again, for ever.
  function read(query, variables = {}) {
    return new Promise((resolve, reject) => {
      let result = {};
      const timer = setTimeout(() => {
        dispose();
        reject(new Error("no answer within 10 s"));
      }, 10_000);
      const dispose = state.client.subscribe(
        { query, variables },
        {
          next: (value) => {
            result = value;
          },
          error: (error) => {
            clearTimeout(timer);
            reject(error instanceof Error ? error : new Error(errorText(error) || "failed"));
          },
          complete: () => {
            clearTimeout(timer);
            resolve(result);
          },
        },
      );
    });
  }

  const errorText = (errors) =>
    (errors || [])
      .map((e) => `${e.message}${e.extensions?.code ? ` (${e.extensions.code})` : ""}`)
      .join("; ");

  // ---- connection state and staleness ----------------------------------------

  const PANELS = [
    "panel-presence",
    "panel-events",
    "panel-pipeline",
    "panel-delivery",
    "panel-online-history",
    "panel-alerts",
    "panel-announcements",
  ];

  function setConnection(kind, text) {
    document.body.dataset.connection = kind;
    $("connection").textContent = text;
  }

  function setPanel(id, panelState, note) {
    const panel = $(id);
    if (panel.dataset.state === panelState && !note) return;
    panel.dataset.state = panelState;
    panel.setAttribute("aria-busy", panelState === "loading" ? "true" : "false");
    const freshness = panel.querySelector(".freshness");
    if (panelState === "live") {
      state.lastFresh.set(id, new Date());
      freshness.textContent = note || "Live";
    } else if (panelState === "stale") {
      const since = state.lastFresh.get(id);
      freshness.textContent =
        `Stale: not updated since ${since ? since.toLocaleTimeString() : "the page opened"}` +
        " (reconnecting). These numbers may be out of date.";
    } else if (panelState === "loading") {
      freshness.textContent = "Loading…";
    } else {
      freshness.textContent = note || "";
    }
  }

  const fresh = (id) => {
    if (state.live) setPanel(id, "live");
  };

  // ---- sign-in ---------------------------------------------------------------

  async function signIn(token) {
    state.token = token.trim().replace(/^Bearer\s+/i, "");
    let answer;
    try {
      answer = await gql(
        "query DashboardMe { me { id role institutionId departmentIds classroomIds displayName } }",
      );
    } catch (error) {
      return signInFailed(`The server did not answer: ${error.message}`);
    }
    if (!answer.data?.me) return signInFailed(errorText(answer.errors) || "Sign-in failed");
    state.me = answer.data.me;
    sessionStorage.setItem(TOKEN_KEY, state.token);
    const inst = await gql(
      `query DashboardInstitution($id: ID!) { institution(id: $id) { id name channel
        departments { id name channel } classrooms { id name departmentId channel } } }`,
      { id: state.me.institutionId },
    );
    state.institution = inst.data?.institution || null;
    chooseChannels();
    showBoard();
    connect();
  }

  function signInFailed(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    $("sign-in-error").textContent = message;
    $("sign-in").hidden = false;
    $("board").hidden = true;
    $("token").focus();
  }

  function chooseChannels() {
    const me = state.me;
    const inst = state.institution;
    const everything = isManager();
    state.alertsChannel = `institution:${me.institutionId}:alerts`;
    const watched = [
      { name: inst ? inst.channel : `institution:${me.institutionId}`, label: inst ? inst.name : me.institutionId },
    ];
    for (const d of inst ? inst.departments : []) {
      if (everything || me.departmentIds.includes(d.id)) {
        watched.push({ name: d.channel, label: `Department: ${d.name}` });
      }
    }
    for (const c of inst ? inst.classrooms : []) {
      if (everything || me.classroomIds.includes(c.id)) {
        watched.push({ name: c.channel, label: `Classroom: ${c.name}` });
      }
    }
    state.watched = watched;
  }

  function labelOf(channel) {
    return state.watched.find((w) => w.name === channel)?.label || channel;
  }

  function showBoard() {
    const me = state.me;
    $("sign-in").hidden = true;
    $("board").hidden = false;
    $("sign-out").hidden = false;
    const who = $("who");
    who.hidden = false;
    who.textContent = `${me.displayName || me.id} · ${me.role.toLowerCase()} · ${
      state.institution ? state.institution.name : me.institutionId
    }`;
    const select = $("pub-channel");
    select.replaceChildren(...state.watched.map((w) => el("option", { value: w.name, text: w.label })));
    $("publish-form").hidden = me.role === "STUDENT";
    if (!isManager()) {
      for (const id of ["events-unavailable", "pipeline-unavailable"]) {
        $(id).hidden = false;
        $(id).textContent = "Analytics and pipeline figures are for admins and services.";
      }
      $("events-figure").hidden = true;
      $("events-table").hidden = true;
      $("pipeline-figures").hidden = true;
      $("delivery-figure").hidden = true;
      $("delivery-unavailable").hidden = false;
      $("delivery-unavailable").textContent = "Delivery figures are for admins and services.";
    }
    renderPresence();
    $("main").focus();
  }

  // ---- the socket --------------------------------------------------------------

  function connect() {
    state.client?.dispose(); // a client whose token was refused
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    let pingTimer = null;
    let attempt = 0;
    const client = graphqlWs.createClient({
      url: `${scheme}//${location.host}/graphql`,
      connectionParams: () => ({ authorization: `Bearer ${state.token}` }),
      lazy: false, // keep one socket open (and retrying) for the page's life
      retryAttempts: Infinity,
      // Quick at first (a blip, a restart), then at most every 3 s, with jitter: a
      // dashboard is a handful of admins, not a reconnect herd.
      retryWait: (retries) =>
        new Promise((resolve) =>
          setTimeout(resolve, Math.min(3000, 250 * 2 ** retries) + Math.random() * 250),
        ),
      // Retry everything but a refused token: 4403 (invalid or expired) or 4401.
      shouldRetry: (event) => !(event && (event.code === 4403 || event.code === 4401)),
      onNonLazyError: (error) => {
        const code = error && error.code ? ` (close code ${error.code}${error.reason ? `: ${error.reason}` : ""})` : "";
        markStale();
        setConnection("refused", `Disconnected: the server refused the token${code}. Sign in again.`);
        signInFailed(`The server closed the connection${code}. Paste a new token.`);
      },
      keepAlive: 10_000,
      on: {
        connecting: (retrying) => {
          if (retrying) {
            attempt += 1;
            setConnection("reconnecting", `Reconnecting… (attempt ${attempt})`);
          } else if (!state.live) {
            setConnection("connecting", "Connecting…");
          }
        },
        connected: () => {
          attempt = 0;
          onConnected();
        },
        closed: () => {
          clearTimeout(pingTimer);
          if (state.live) {
            markStale();
            setConnection("reconnecting", "Reconnecting… the connection was lost");
          }
        },
        // No pong within 5 s of a ping: the network is gone without a close; close
        // it ourselves so the client reconnects (graphql-ws's own recipe).
        ping: (received) => {
          if (!received) pingTimer = setTimeout(() => state.socket?.close(4408, "Request Timeout"), 5000);
        },
        pong: (received) => {
          if (received) clearTimeout(pingTimer);
        },
        opened: (socket) => {
          state.socket = socket;
        },
      },
    });
    state.client = client;
  }

  function markStale() {
    state.live = false;
    state.generation += 1;
    disposeAll();
    for (const id of PANELS) {
      if ($(id).dataset.state === "live") setPanel(id, "stale");
    }
  }

  function disposeAll() {
    for (const dispose of state.disposers) dispose();
    state.disposers = [];
  }

  // One subscription of this connection; its callbacks go quiet once the
  // connection is gone (generation), so a late message never lands as fresh data.
  function subscribe(query, variables, onData, onError, onComplete = () => {}) {
    const generation = state.generation;
    const current = () => generation === state.generation;
    const dispose = state.client.subscribe(
      { query, variables },
      {
        next: (result) => {
          if (!current()) return;
          if (result.errors) onError(errorText(result.errors));
          else onData(result.data);
        },
        error: (error) => {
          if (!current()) return;
          onError(Array.isArray(error) ? errorText(error) : error?.message || String(error?.code || error));
        },
        complete: () => {
          if (current()) onComplete();
        },
      },
    );
    state.disposers.push(dispose);
  }

  async function onConnected() {
    state.generation += 1;
    disposeAll();
    state.live = true;
    setConnection("live", "Live");
    for (const id of PANELS) {
      if ($(id).dataset.state !== "unavailable") setPanel(id, "loading");
    }
    const generation = state.generation;
    subscribePresence();
    if (isManager()) {
      subscribeMetrics();
    } else {
      setPanel("panel-events", "unavailable", "Not available to your role.");
      setPanel("panel-pipeline", "unavailable", "Not available to your role.");
      setPanel("panel-delivery", "unavailable", "Not available to your role.");
    }
    refreshOnlineHistory();
    try {
      await syncChannels(generation);
    } catch (error) {
      console.warn("dashboard: channels", error);
    }
  }

  // ---- presence ----------------------------------------------------------------

  const PRESENCE = `subscription DashboardPresence($channel: String!) {
    presence(channel: $channel) { type channel memberCount } }`;

  function subscribePresence() {
    const pending = new Set(state.watched.map((w) => w.name));
    for (const { name } of state.watched) {
      subscribe(
        PRESENCE,
        { channel: name },
        (data) => {
          state.presence.set(name, data.presence.memberCount);
          pending.delete(name);
          renderPresence();
          refreshOnline();
          refreshOnlineHistory();
          refreshRollCalls(); // who is online changed
          if (pending.size === 0) fresh("panel-presence");
        },
        (message) => {
          state.presence.set(name, `unavailable: ${message}`);
          pending.delete(name);
          renderPresence();
        },
      );
    }
  }

  const refreshOnline = throttle(async () => {
    if (!state.live) return;
    const answer = await read("query DashboardOnline($id: ID!) { onlineCount(institutionId: $id) }", {
      id: state.me.institutionId,
    });
    if (answer.data && answer.data.onlineCount !== null) {
      $("online-count").textContent = String(answer.data.onlineCount);
    }
  }, 300);

  function renderPresence() {
    const rows = state.watched.map((w) => {
      const count = state.presence.get(w.name);
      return el(
        "tr",
        { dataset: { channel: w.name } },
        el("th", { scope: "row", text: w.label }),
        el("td", { text: count === undefined ? "–" : String(count) }),
      );
    });
    $("presence-table").tBodies[0].replaceChildren(...rows);
  }

  // ---- live metrics, chart and pipeline ------------------------------------------

  const METRICS = `subscription DashboardMetrics($id: ID!) {
    liveMetrics(institutionId: $id) { at activeUsers errorsPerMinute
      messagesDeliveredPerMinute eventsPerMinute { key count }
      delivery { delivered serverProcesses latency { p50Ms p95Ms p99Ms } } } }`;

  function subscribeMetrics() {
    subscribe(
      METRICS,
      { id: state.me.institutionId },
      (data) => {
        const m = data.liveMetrics;
        $("m-active").textContent = String(m.activeUsers);
        $("m-errors").textContent = String(m.errorsPerMinute);
        $("m-delivered").textContent = String(m.messagesDeliveredPerMinute);
        renderDelivery(m.delivery);
        const rows = [...m.eventsPerMinute]
          .sort((a, b) => b.count - a.count || a.key.localeCompare(b.key))
          .map((c) => el("tr", {}, el("th", { scope: "row", text: c.key }), el("td", { text: String(c.count) })));
        if (rows.length === 0) rows.push(el("tr", {}, el("td", { colspan: "2", text: "No events." })));
        $("events-table").tBodies[0].replaceChildren(...rows);
        $("events-table").dataset.total = String(m.eventsPerMinute.reduce((n, c) => n + c.count, 0));
        fresh("panel-events");
        refreshChart();
        refreshPipeline();
        refreshDelivery();
        refreshOnlineHistory();
      },
      (message) => {
        setPanel("panel-events", "unavailable", `Not available: ${message}`);
        setPanel("panel-pipeline", "unavailable", `Not available: ${message}`);
      },
    );
  }

  const SERIES_STYLE = [
    { stroke: "#1f5fbf", dash: undefined },
    { stroke: "#b35900", dash: [8, 4] },
    { stroke: "#2e7d32", dash: [2, 3] },
    { stroke: "#7b1fa2", dash: [10, 3, 2, 3] },
    { stroke: "#455a64", dash: [4, 4] },
  ];

  const refreshChart = throttle(async () => {
    if (!state.live || !isManager()) return;
    const to = new Date(Math.ceil(Date.now() / 60000) * 60000);
    const from = new Date(to.getTime() - HISTORY_MINUTES * 60000);
    const vars = { id: state.me.institutionId, from: from.toISOString(), to: to.toISOString() };
    const first = await read(
      `query DashboardTop($id: ID!, $from: DateTime!, $to: DateTime!) {
        top: topEvents(institutionId: $id, from: $from, to: $to, limit: ${TOP_TYPES}) { key count }
        errors: analytics(institutionId: $id, metric: ERRORS, from: $from, to: $to, bucket: MINUTE) { at value }
        total: analytics(institutionId: $id, metric: EVENTS, from: $from, to: $to, bucket: MINUTE) { at value } }`,
      vars,
    );
    if (!first.data || !first.data.top) return;
    const types = first.data.top.map((c) => c.key);
    let perType = {};
    if (types.length) {
      const fields = types
        .map((_, i) => `t${i}: analytics(institutionId: $id, metric: EVENTS, from: $from, to: $to, bucket: MINUTE, eventType: $e${i}) { value }`)
        .join("\n");
      const params = types.map((_, i) => `$e${i}: String!`).join(", ");
      const second = await read(
        `query DashboardSeries($id: ID!, $from: DateTime!, $to: DateTime!, ${params}) { ${fields} }`,
        { ...vars, ...Object.fromEntries(types.map((t, i) => [`e${i}`, t])) },
      );
      perType = second.data || {};
    }
    const xs = first.data.total.map((p) => new Date(p.at).getTime() / 1000);
    const series = [{}];
    const data = [xs];
    types.forEach((type, i) => {
      const style = SERIES_STYLE[i % SERIES_STYLE.length];
      series.push({ label: type, stroke: style.stroke, dash: style.dash, width: 2 });
      data.push((perType[`t${i}`] || []).map((p) => p.value));
    });
    series.push({ label: "errors", stroke: "#c62828", dash: [1, 3], width: 2 });
    data.push(first.data.errors.map((p) => p.value));
    drawChart(series, data);
    const total = first.data.total.reduce((n, p) => n + p.value, 0);
    const errors = first.data.errors.reduce((n, p) => n + p.value, 0);
    const top = first.data.top[0];
    const summary = $("events-figure").querySelector("figcaption");
    summary.textContent =
      `Last hour, per minute: ${total} events, ${errors} errors` +
      (top ? `; most frequent ${top.key} (${top.count}).` : ".") +
      ` Lines: ${types.join(", ") || "none"}, errors (dotted).`;
    $("events-chart").dataset.total = String(total);
  }, 1500);

  function drawChart(series, data) {
    const host = $("events-chart");
    const same =
      state.chart &&
      state.chart.series.length === series.length &&
      series.every((s, i) => i === 0 || state.chart.series[i].label === s.label);
    if (same) {
      state.chart.setData(data);
      return;
    }
    if (state.chart) state.chart.destroy();
    else {
      new ResizeObserver(() => {
        const w = host.clientWidth;
        if (state.chart && w > 0) state.chart.setSize({ width: w, height: 220 });
      }).observe(host);
    }
    state.chart = new uPlot(
      {
        width: Math.max(280, host.clientWidth || 600),
        height: 220,
        series,
        axes: [{}, { label: "events / min" }],
        scales: { x: { time: true } },
      },
      data,
      host,
    );
  }

  // ---- delivery latency and online over the last hour ------------------------------

  const ms = (v) => `${v < 10 ? v.toFixed(2) : v.toFixed(0)} ms`;
  const latencyText = (l) => (l ? `p50 ${ms(l.p50Ms)} · p95 ${ms(l.p95Ms)} · p99 ${ms(l.p99Ms)}` : "nothing delivered");

  // liveMetrics.delivery: every server process, current and previous minute.
  function renderDelivery(d) {
    if (!d) {
      $("m-delivered-all").textContent = "unknown now";
      $("m-delivery-latency").textContent = "unknown now";
      $("m-processes").textContent = "unknown now";
      return;
    }
    $("m-delivered-all").textContent = String(d.delivered);
    $("m-processes").textContent = String(d.serverProcesses);
    $("m-delivery-latency").textContent = latencyText(d.latency);
  }

  // One uPlot per host element, resized with it; redrawn in place when the series
  // are the same.
  const charts = new Map();

  function drawInto(host, series, data, axis) {
    const known = charts.get(host.id);
    if (known && known.series.length === series.length) {
      known.setData(data);
      return;
    }
    if (known) known.destroy();
    else {
      new ResizeObserver(() => {
        const chart = charts.get(host.id);
        if (chart && host.clientWidth > 0) chart.setSize({ width: host.clientWidth, height: 200 });
      }).observe(host);
    }
    charts.set(
      host.id,
      new uPlot(
        {
          width: Math.max(240, host.clientWidth || 480),
          height: 200,
          series,
          axes: [{}, { label: axis }],
          scales: { x: { time: true } },
        },
        data,
        host,
      ),
    );
  }

  const refreshDelivery = throttle(async () => {
    if (!state.live || !isManager()) return;
    const answer = await read(`query DashboardDelivery { systemStatus { delivery {
      current { delivered serverProcesses latency { p50Ms p95Ms p99Ms } }
      minutes { at processes delivered latency { p50Ms p95Ms p99Ms } } } } }`);
    const d = answer.data?.systemStatus?.delivery;
    if (!d) {
      $("delivery-unavailable").hidden = false;
      $("delivery-unavailable").textContent = answer.errors
        ? `Delivery figures: ${errorText(answer.errors)}`
        : "Delivery figures cannot be read now.";
      return;
    }
    $("delivery-unavailable").hidden = true;
    const minutes = d.minutes;
    const xs = minutes.map((m) => new Date(m.at).getTime() / 1000);
    const pick = (key) => minutes.map((m) => (m.latency ? m.latency[key] : null));
    drawInto(
      $("delivery-chart"),
      [
        {},
        // Points as well as lines: a minute between two gaps has no line to draw.
        { label: "p50 (ms)", stroke: "#1f5fbf", width: 2, points: { show: true, size: 5 } },
        { label: "p95 (ms)", stroke: "#b35900", dash: [8, 4], width: 2, points: { show: true, size: 5 } },
        { label: "p99 (ms)", stroke: "#c62828", dash: [2, 3], width: 2, points: { show: true, size: 5 } },
      ],
      [xs, pick("p50Ms"), pick("p95Ms"), pick("p99Ms")],
      "latency (ms)",
    );
    const reported = minutes.filter((m) => m.delivered !== null);
    const delivered = reported.reduce((n, m) => n + m.delivered, 0);
    const busiest = reported.reduce((best, m) => (m.delivered > (best?.delivered ?? -1) ? m : best), null);
    const withLatency = minutes.filter((m) => m.latency);
    const worst = withLatency.reduce((best, m) => (m.latency.p99Ms > (best?.latency.p99Ms ?? -1) ? m : best), null);
    const chart = $("delivery-chart");
    chart.dataset.delivered = String(delivered);
    chart.dataset.minutes = String(withLatency.length);
    $("delivery-figure").querySelector("figcaption").textContent =
      `Last hour, per minute, every server process: ${delivered} messages delivered` +
      (busiest && busiest.delivered ? `, at most ${busiest.delivered} in a minute (${time(busiest.at)})` : "") +
      (worst ? `; worst p99 ${ms(worst.latency.p99Ms)} (${time(worst.at)})` : "") +
      `. Now (current and previous minute): ${latencyText(d.current.latency)}. ` +
      `Minutes no server reported: ${minutes.length - reported.length}. ` +
      "Lines: p50 solid, p95 dashed, p99 dotted.";
    fresh("panel-delivery");
  }, 1500);

  const refreshOnlineHistory = throttle(async () => {
    if (!state.live) return;
    const answer = await read(
      `query DashboardOnlineHistory($id: ID!) {
        onlineCountHistory(institutionId: $id, minutes: ${HISTORY_MINUTES}) { at online } }`,
      { id: state.me.institutionId },
    );
    const points = answer.data?.onlineCountHistory;
    if (!points) {
      setPanel("panel-online-history", "unavailable", `Not available: ${errorText(answer.errors)}`);
      return;
    }
    drawInto(
      $("online-chart"),
      [{}, { label: "online", stroke: "#2e7d32", width: 2, fill: "rgba(46, 125, 50, 0.08)" }],
      [points.map((p) => new Date(p.at).getTime() / 1000), points.map((p) => p.online)],
      "people online",
    );
    const sampled = points.filter((p) => p.online !== null);
    const values = sampled.map((p) => p.online);
    const latest = sampled.length ? sampled[sampled.length - 1] : null;
    const chart = $("online-chart");
    chart.dataset.samples = String(sampled.length);
    chart.dataset.latest = latest ? String(latest.online) : "";
    $("online-figure").querySelector("figcaption").textContent = sampled.length
      ? `Last hour, people of your institution online: ${latest.online} at ${time(latest.at)} (latest sample), ` +
        `highest ${Math.max(...values)}, lowest ${Math.min(...values)}; ` +
        `${points.length - sampled.length} of ${points.length} samples missing (no server sampled then).`
      : "No samples yet: presence is sampled once per minute.";
    fresh("panel-online-history");
  }, 2000);

  const refreshPipeline = throttle(async () => {
    if (!state.live || !isManager()) return;
    const answer = await read(`query DashboardStatus { systemStatus { eventLog eventsEmitted
      eventsDropped lagTotal lagError consumers { topic partition lag latencyMs } } }`);
    const s = answer.data?.systemStatus;
    if (!s) {
      $("pipeline-unavailable").hidden = false;
      $("pipeline-unavailable").textContent = `System status: ${errorText(answer.errors)}`;
      return;
    }
    $("m-log").textContent = s.eventLog;
    $("m-emitted").textContent = `${s.eventsEmitted} / ${s.eventsDropped}`;
    $("m-lag").textContent = s.lagTotal === null ? `unknown: ${s.lagError || "not readable"}` : String(s.lagTotal);
    const latencies = s.consumers.map((c) => c.latencyMs).filter((v) => v !== null);
    $("m-latency").textContent = latencies.length ? `${Math.max(...latencies).toFixed(0)} ms` : "no batch yet";
    fresh("panel-pipeline");
  }, 1000);

  // ---- channels: announcements and alerts --------------------------------------

  const CHANNEL = `subscription DashboardChannel($name: String!, $since: PositionInput) {
    channel(name: $name, since: $since) { offset epoch kind recovered
      announcement { id channel authorId title body priority createdAt }
      alert { ...DashboardAlert } } }
    fragment DashboardAlert on Alert { id severity title body targets raisedBy createdAt state
      resolvedAt resolvedBy }`;

  async function syncChannels(generation) {
    const names = [state.alertsChannel, ...state.watched.map((w) => w.name)];
    const unknown = names.filter((n) => !state.positions.has(n));
    if (unknown.length) {
      // First time: where each channel is now, then what it already holds.
      const fields = unknown.map((n, i) => `p${i}: channelPosition(name: ${JSON.stringify(n)}) { offset epoch }`);
      const answer = await read(`query DashboardPositions { ${fields.join("\n")} }`);
      unknown.forEach((n, i) => {
        const p = answer.data?.[`p${i}`];
        if (p) state.positions.set(n, p);
      });
      await loadAnnouncements(unknown.filter((n) => n !== state.alertsChannel));
    } else {
      await refreshAlerts();
    }
    // Open alerts from Query.alertPage (every time: some may have been raised or
    // resolved while the socket was down), then each one's roll-call live.
    await loadOpenAlerts();
    if (generation !== state.generation) return;
    for (const name of names) subscribeChannel(name);
    followRollCalls();
    fresh("panel-announcements");
    fresh("panel-alerts");
    renderAlerts();
  }

  function subscribeChannel(name) {
    const since = state.positions.get(name);
    subscribe(
      CHANNEL,
      { name, since: since ? { offset: since.offset, epoch: since.epoch } : null },
      (data) => onChannelEvent(name, data.channel),
      (message) => {
        if (name === state.alertsChannel) $("alerts-message").textContent = `Alerts: ${message}`;
        else $("publish-message").textContent = `${labelOf(name)}: ${message}`;
      },
    );
  }

  function onChannelEvent(name, event) {
    state.positions.set(name, { offset: event.offset, epoch: event.epoch });
    if (!event.recovered) {
      // History did not reach back: refetch what the lists hold.
      if (name === state.alertsChannel) refreshAlerts().then(loadOpenAlerts).then(followRollCalls);
      else loadAnnouncements([name]);
    }
    if (event.announcement) {
      state.announcements.set(event.announcement.id, event.announcement);
      renderAnnouncements();
    }
    if (event.alert) {
      const known = state.alerts.get(event.alert.id);
      state.alerts.set(event.alert.id, { ...known, ...event.alert, rollCall: known?.rollCall });
      renderAlerts();
      followRollCall(state.alerts.get(event.alert.id));
    }
  }

  async function loadAnnouncements(names) {
    if (!names.length) return;
    const fields = names.map(
      (n, i) => `a${i}: announcements(channel: ${JSON.stringify(n)}, last: 10) {
        id channel authorId title body priority createdAt }`,
    );
    const answer = await read(`query DashboardAnnouncements { ${fields.join("\n")} }`);
    names.forEach((_, i) => {
      for (const a of answer.data?.[`a${i}`] || []) state.announcements.set(a.id, a);
    });
    renderAnnouncements();
  }

  function renderAnnouncements() {
    const latest = [...state.announcements.values()]
      .sort((a, b) => Number(b.id) - Number(a.id))
      .slice(0, 15);
    const items = latest.map((a) =>
      el(
        "li",
        { dataset: { id: a.id, priority: a.priority } },
        el(
          "p",
          { class: "headline" },
          el("span", { class: "badge", text: a.priority }),
          " ",
          el("strong", { class: "title", text: a.title }),
        ),
        el("p", { class: "body", text: a.body }),
        el("p", { class: "meta", text: `${labelOf(a.channel)} · ${a.authorId} · ${time(a.createdAt)}` }),
      ),
    );
    if (!items.length) items.push(el("li", { class: "note", text: "No announcements yet." }));
    $("announcement-list").replaceChildren(...items);
  }

  // ---- alerts ----------------------------------------------------------------------

  const ALERT_FIELDS = `id severity title body targets raisedBy createdAt state resolvedAt resolvedBy
    rollCall { targetedCount acknowledgedCount pendingCount pendingOnlineCount
      acknowledged { userId displayName acknowledgedAt online }
      pending { userId displayName online } }`;

  async function fetchAlerts(ids) {
    if (!ids.length) return;
    const fields = ids.map((id, i) => `x${i}: alert(id: ${JSON.stringify(String(id))}) { ${ALERT_FIELDS} }`);
    const answer = await read(`query DashboardAlerts { ${fields.join("\n")} }`);
    ids.forEach((id, i) => {
      const a = answer.data?.[`x${i}`];
      if (a) state.alerts.set(a.id, a);
      state.alertsRead.add(String(id));
      followRollCall(a);
    });
    renderAlerts();
    return answer;
  }

  // The open alerts the viewer may see (Query.alertPage: an admin's whole
  // institution, anyone else's those that target them or that they raised), with
  // their roll-calls where the viewer manages them.
  async function loadOpenAlerts() {
    const answer = await read(`query DashboardOpenAlerts {
      alertPage(state: OPEN, first: ${OPEN_ALERTS}) { rows { ${ALERT_FIELDS} } } }`);
    for (const a of answer.data?.alertPage?.rows || []) {
      state.alerts.set(a.id, a);
      state.alertsRead.add(a.id);
    }
    if (answer.errors) $("alerts-message").textContent = `Alerts: ${errorText(answer.errors)}`;
    renderAlerts();
  }

  const refreshAlerts = () => fetchAlerts([...state.alerts.keys()]);

  // Each open alert the viewer manages (admins, services, whoever raised it) has its
  // own alertRollCall subscription: the roll-call at once, again after every
  // acknowledgement (the server announces each to whoever manages the alert), the
  // resolved alert last, then complete.
  const ROLL_CALL = `subscription DashboardRollCall($id: ID!) {
    alertRollCall(id: $id) { ${ALERT_FIELDS} } }`;
  const manages = (a) => isManager() || a.raisedBy === state.me.id;

  function followRollCall(a) {
    if (!a || a.state !== "OPEN" || !manages(a) || !state.live) return;
    if (state.rollCalls.get(a.id) === state.generation) return; // already followed
    const generation = state.generation;
    state.rollCalls.set(a.id, generation);
    const done = () => {
      if (state.rollCalls.get(a.id) === generation) state.rollCalls.delete(a.id);
    };
    subscribe(
      ROLL_CALL,
      { id: a.id },
      (data) => {
        const alert = data.alertRollCall;
        state.alerts.set(alert.id, alert);
        state.alertsRead.add(alert.id);
        renderAlerts();
        fresh("panel-alerts");
      },
      (message) => {
        done();
        $("alerts-message").textContent = `Alert #${a.id} roll-call: ${message}`;
        // The server could not read a channel for a moment: try again; other
        // failures of the socket itself restart every subscription anyway.
        if (message.includes("(UNAVAILABLE)")) setTimeout(() => followRollCall(state.alerts.get(a.id)), 2000);
      },
      done, // after the resolved alert: its roll-call is final
    );
  }

  const followRollCalls = () => {
    for (const a of state.alerts.values()) followRollCall(a);
  };

  // Who of the roll-call is online moves with presence, which alertRollCall does
  // not follow: re-read open alerts on presence events.
  const refreshRollCalls = throttle(async () => {
    if (!state.live) return;
    const open = [...state.alerts.values()].filter(
      (a) => a.state === "OPEN" || !state.alertsRead.has(a.id),
    );
    await fetchAlerts(open.map((a) => a.id));
  }, 400);

  const SEVERITY_MARK = { INFO: "ℹ", WARNING: "⚠", CRITICAL: "‼", EMERGENCY: "🚨" };

  function renderAlerts() {
    const focused = document.activeElement?.closest?.("[data-action]");
    const refocus = focused ? [focused.dataset.action, focused.dataset.alert] : null;
    const open = new Set(
      [...document.querySelectorAll("#alert-list details[open]")].map((d) => d.dataset.alert),
    );
    const alerts = [...state.alerts.values()].sort(
      (a, b) => (a.state === "OPEN" ? 0 : 1) - (b.state === "OPEN" ? 0 : 1) || Number(b.id) - Number(a.id),
    );
    $("alerts-empty").hidden = alerts.length > 0;
    $("alert-list").replaceChildren(...alerts.map((a) => renderAlert(a, open.has(a.id))));
    if (refocus) {
      document.querySelector(`[data-action="${refocus[0]}"][data-alert="${refocus[1]}"]`)?.focus();
    }
  }

  function renderAlert(a, detailsOpen) {
    const me = state.me;
    const item = el("li", {
      class: "alert",
      dataset: { id: a.id, state: a.state, severity: a.severity },
      "aria-labelledby": `alert-${a.id}-title`,
    });
    item.append(
      el(
        "h3",
        { id: `alert-${a.id}-title` },
        el("span", { class: "severity", text: `${SEVERITY_MARK[a.severity] || ""} ${a.severity}` }),
        " ",
        el("span", { class: "state", text: a.state === "OPEN" ? "OPEN" : "✓ RESOLVED" }),
        " ",
        el("span", { class: "title", text: `#${a.id} ${a.title}` }),
      ),
      el("p", { class: "body", text: a.body }),
      el("p", {
        class: "meta",
        text:
          `Raised ${time(a.createdAt)} by ${a.raisedBy} · ` +
          (a.targets.length ? `targets: ${a.targets.map(labelOf).join(", ")}` : "the whole institution") +
          (a.resolvedAt ? ` · resolved ${time(a.resolvedAt)} by ${a.resolvedBy}` : ""),
      }),
    );
    const r = a.rollCall;
    if (r) {
      item.append(
        el("p", {
          class: "rollcall",
          dataset: { acknowledged: String(r.acknowledgedCount), pending: String(r.pendingCount), pendingOnline: String(r.pendingOnlineCount) },
          text:
            `Acknowledged ${r.acknowledgedCount} of ${r.targetedCount} · ` +
            `not yet ${r.pendingCount} (${r.pendingOnlineCount} of them online now)`,
        }),
      );
      const people = [
        ...r.acknowledged.map((p) => el("li", { class: "ack", text: `✓ ${p.displayName}: acknowledged ${time(p.acknowledgedAt)}${p.online ? " · online" : ""}` })),
        ...r.pending.map((p) => el("li", { class: "pending", text: `✗ ${p.displayName}: not yet${p.online ? " · ● online" : " · ○ offline"}` })),
      ];
      item.append(
        el(
          "details",
          { dataset: { alert: a.id }, open: detailsOpen },
          el("summary", { text: "Who has acknowledged" }),
          el("ul", { class: "people" }, ...people),
        ),
      );
    } else {
      item.append(el("p", { class: "note", text: "Roll-call: only for admins, services and whoever raised it." }));
    }
    if (a.state === "OPEN") {
      const actions = el("p", { class: "actions" });
      const pendingMe = r ? r.pending.some((p) => p.userId === me.id) : true;
      if (pendingMe) {
        actions.append(el("button", { type: "button", dataset: { action: "acknowledge", alert: a.id }, text: `Acknowledge #${a.id}` }), " ");
      }
      if (isManager() || a.raisedBy === me.id) {
        actions.append(el("button", { type: "button", class: "danger", dataset: { action: "resolve", alert: a.id }, text: `Resolve #${a.id}` }));
      }
      item.append(actions);
    }
    return item;
  }

  async function alertAction(action, id) {
    const message = $("alerts-message");
    const mutation =
      action === "acknowledge"
        ? "mutation DashboardAck($id: ID!) { acknowledgeAlert(alertId: $id) { alertId acknowledgedAt } }"
        : "mutation DashboardResolve($id: ID!) { resolveAlert(alertId: $id) { id state } }";
    try {
      const answer = await gql(mutation, { id });
      message.textContent = answer.errors
        ? `Alert #${id}: ${errorText(answer.errors)}`
        : `Alert #${id}: ${action === "acknowledge" ? "acknowledged" : "resolved"}.`;
    } catch (error) {
      message.textContent = `Alert #${id}: ${error.message}`;
    }
    await fetchAlerts([id]);
  }

  // ---- wiring --------------------------------------------------------------------

  function wire() {
    $("sign-in-form").addEventListener("submit", (event) => {
      event.preventDefault();
      $("sign-in-error").textContent = "";
      signIn($("token").value);
    });
    $("sign-out").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      state.client?.dispose();
      location.reload();
    });
    $("alert-list").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (button) alertAction(button.dataset.action, button.dataset.alert);
    });
    $("alert-open-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const id = $("alert-id").value.trim();
      if (!/^[0-9]+$/.test(id)) return;
      const answer = await fetchAlerts([id]);
      $("alerts-message").textContent = answer?.errors ? `Alert #${id}: ${errorText(answer.errors)}` : "";
    });
    $("publish-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const message = $("publish-message");
      const input = {
        channel: $("pub-channel").value,
        title: $("pub-title").value,
        body: $("pub-body").value,
        priority: $("pub-priority").value,
      };
      try {
        const answer = await gql(
          `mutation DashboardPublish($input: PublishAnnouncementInput!) {
            publishAnnouncement(input: $input) { id channel authorId title body priority createdAt } }`,
          { input },
        );
        const a = answer.data?.publishAnnouncement;
        if (a) {
          state.announcements.set(a.id, a);
          renderAnnouncements();
          message.textContent = `Published #${a.id} on ${labelOf(a.channel)}.`;
          $("pub-title").value = "";
          $("pub-body").value = "";
        } else {
          message.textContent = `Not published: ${errorText(answer.errors)}`;
        }
      } catch (error) {
        message.textContent = `Not published: ${error.message}`;
      }
    });
  }

  wire();
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
})();
