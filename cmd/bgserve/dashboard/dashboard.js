// bgserve's live dashboard (docs/dashboard.md): follows GET /_bgserve/events
// (Server-Sent Events) and draws what it says.
//
// Every value reaches the page through textContent or an attribute,
// never as markup, so a task error holding "<script>" shows as text; the
// server's Content-Security-Policy forbids inline script besides.
"use strict";
(function () {
  const MAX_TASKS = 500;      // records kept in the page
  const MAX_SAMPLES = 300;    // one per second: five minutes of charts
  const MAX_ROWS = 50;        // task rows shown (filter or search for others)
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    stats: null,
    plugin: null,
    routes: [],
    reloads: [],
    tasks: new Map(),         // id -> record
    logs: new Map(),          // task id -> [[level, wall ms, text], ...]
    samples: [],              // [ms, rps, eps, queued, running]
    outcomes: [],             // [succeeded, failed] per stats sample
    lastTotals: null,
    selected: null,           // id in the detail view
    tasksVersion: 0,          // bumped when the records or the filters change
    drawnVersion: -1,         // the version the task table shows
    drawnRunning: false,      // it shows running tasks (their durations grow)
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function fmtNum(v, digits) {
    if (v === undefined || v === null) return "-";
    return Number(v).toFixed(digits === undefined ? 0 : digits);
  }

  function fmtUs(us) {
    if (us === undefined || us === null) return "-";
    if (us < 1000) return us + " µs";
    if (us < 1000000) return (us / 1000).toFixed(1) + " ms";
    return (us / 1000000).toFixed(2) + " s";
  }

  function fmtDuration(s) {
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24,
      m = Math.floor(s / 60) % 60, sec = s % 60;
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + (d || h || m ? m + "m " : "") + sec + "s";
  }

  function taskDuration(t) {
    if (!t.started_at_us) return "-";
    const end = t.finished_at_us || Date.now() * 1000;
    return fmtUs(Math.max(0, end - t.started_at_us));
  }

  // ---- receiving ---------------------------------------------------------

  // An update may name a record the page already holds unchanged (the
  // server reads a record when it sends it, so a task that finished
  // while one update was being built is sent again, the same, in the
  // next); only a real change makes the table redraw.
  function applyTasks(list) {
    let changed = false;
    for (const t of list) {
      const old = state.tasks.get(t.id);
      if (old && JSON.stringify(old) === JSON.stringify(t)) continue;
      state.tasks.set(t.id, t);
      changed = true;
    }
    if (changed) state.tasksVersion++;
    if (state.tasks.size > MAX_TASKS) {
      const ids = Array.from(state.tasks.keys()).sort((a, b) => a - b);
      for (let i = 0; i < ids.length - MAX_TASKS; i++)
        if (ids[i] !== state.selected) {
          state.tasks.delete(ids[i]);
          state.logs.delete(ids[i]);
        }
    }
  }

  const MAX_LINES = 100;      // log lines kept per task
  function applyLogs(lines) {
    for (const l of lines) {
      let list = state.logs.get(l[0]);
      if (!list) state.logs.set(l[0], (list = []));
      list.push([l[1], l[2], l[3]]);
      if (list.length > MAX_LINES) list.shift();
    }
  }

  function totals(stats) {
    let ok = 0, bad = 0;
    for (const name in stats.tasks) {
      ok += stats.tasks[name].succeeded;
      bad += stats.tasks[name].failed;
    }
    return [ok, bad];
  }

  function applyStats(stats) {
    state.stats = stats;
    const t = totals(stats);
    if (state.lastTotals) {
      state.outcomes.push([Math.max(0, t[0] - state.lastTotals[0]), Math.max(0, t[1] - state.lastTotals[1])]);
      if (state.outcomes.length > MAX_SAMPLES) state.outcomes.shift();
    }
    state.lastTotals = t;
  }

  function apply(msg, snapshot) {
    if (snapshot) {
      state.tasks.clear();
      state.logs.clear();
      state.tasksVersion++;
      state.samples = msg.samples || [];
      state.outcomes = [];
      state.lastTotals = null;
    }
    if (msg.stats) applyStats(msg.stats);
    if ("plugin" in msg) state.plugin = msg.plugin;
    if (msg.routes) state.routes = msg.routes;
    if (msg.reloads) state.reloads = msg.reloads;
    if (msg.logs) applyLogs(msg.logs);
    // Dead letters first: a record this run still holds (failed) wins.
    if (msg.dead) applyTasks(msg.dead);
    if (msg.tasks) applyTasks(msg.tasks);
    if (msg.sample) {
      state.samples.push(msg.sample);
      if (state.samples.length > MAX_SAMPLES) state.samples.shift();
    }
    scheduleRender();
  }

  let pending = false;
  function scheduleRender() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(function () {
      pending = false;
      render();
    });
  }

  // ---- drawing -----------------------------------------------------------

  function render() {
    renderHeader();
    renderNow();
    renderCharts();
    renderKinds();
    renderTasks();
    renderDetail();
    renderRoutes();
    renderDevLoop();
  }

  function renderHeader() {
    const p = state.plugin;
    $("plugin-title").textContent = p ? p.name + " " + p.version + " · generation " + p.generation : "no plugin loaded";
  }

  function renderNow() {
    const s = state.stats, p = state.plugin;
    if (p) {
      $("now-plugin").textContent = p.name + " " + p.version;
      $("now-plugin-sub").textContent = "generation " + p.generation + ", loaded " + p.loaded_at +
        " in " + fmtNum(p.load_ms, 1) + " ms";
    } else {
      $("now-plugin").textContent = "none";
      $("now-plugin-sub").textContent = "";
    }
    const last = state.samples.length ? state.samples[state.samples.length - 1] : null;
    $("now-rps").textContent = last ? fmtNum(last[1], 1) : "-";
    $("now-eps").textContent = last ? fmtNum(last[2], 1) : "-";
    if (!s) return;
    $("now-requests").textContent = s.requests + " requests";
    $("now-errors").textContent = s.errors + " answered 5xx";
    $("now-queue").textContent = s.queue.depth + " / " + s.queue.capacity;
    $("now-queue-sub").textContent = s.queue.accepted + " accepted, not final";
    $("now-workers").textContent = s.workers.busy + " / " + s.workers.total;
    $("now-deferred").textContent = String(s.deferred.pending);
    $("now-dispatch").textContent = fmtUs(s.dispatch_us.p50) + " / " + fmtUs(s.dispatch_us.p99);
    $("now-uptime").textContent = fmtDuration(s.uptime_s);
    $("now-conns").textContent = s.connections.open + " connections open";
  }

  // A polyline per series over the samples, scaled to the highest value.
  function chart(svgId, maxId, series, classes) {
    const svg = $(svgId);
    clear(svg);
    let max = 0;
    for (const line of series) for (const v of line) max = Math.max(max, v);
    $(maxId).textContent = fmtNum(max, max < 10 ? 1 : 0);
    const top = max > 0 ? max : 1;
    series.forEach(function (line, k) {
      if (line.length < 2) return;
      // At least a minute wide; the newest sample at the right edge.
      const span = Math.max(line.length, 60), step = 300 / (span - 1), x0 = 300 - (line.length - 1) * step;
      const pts = line.map((v, i) => (x0 + i * step).toFixed(1) + "," + (58 - (v / top) * 56).toFixed(1));
      const pl = document.createElementNS(SVG, "polyline");
      pl.setAttribute("points", pts.join(" "));
      pl.setAttribute("class", classes[k]);
      svg.appendChild(pl);
    });
  }

  function renderCharts() {
    chart("chart-rps", "chart-rps-max", [state.samples.map((s) => s[1])], ["line"]);
    chart("chart-queue", "chart-queue-max", [state.samples.map((s) => s[3])], ["line"]);
    chart("chart-outcomes", "chart-outcomes-max",
      [state.outcomes.map((o) => o[0]), state.outcomes.map((o) => o[1])], ["line ok", "line bad"]);
  }

  const KIND_COLS = ["queued", "running", "succeeded", "failed", "retried", "skipped", "discarded", "cancelled"];

  function renderKinds() {
    const body = $("task-kinds-body");
    clear(body);
    const names = state.stats ? Object.keys(state.stats.tasks).sort() : [];
    for (const name of names) {
      const k = state.stats.tasks[name], tr = el("tr");
      tr.appendChild(el("td", name));
      for (const c of KIND_COLS) {
        const td = el("td", k[c], "num");
        if (c === "failed" && k[c] > 0) td.classList.add("bad");
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    // The name filter offers every name seen.
    const sel = $("filter-name"), have = new Set();
    for (const o of sel.options) have.add(o.value);
    const seen = new Set(names);
    for (const t of state.tasks.values()) seen.add(t.name);
    for (const name of Array.from(seen).sort())
      if (!have.has(name)) sel.appendChild(el("option", name));
  }

  function retryButton(id) {
    const b = el("button", "retry", "retry");
    b.type = "button";
    b.dataset.id = String(id);
    b.addEventListener("click", function (ev) {
      ev.stopPropagation();
      retry(id);
    });
    return b;
  }

  // The rows drawn, by task id: [the row, what it shows but its duration].
  const drawnRows = new Map();

  function rowKey(t) {
    return JSON.stringify([t.state, t.name, t.attempts, t.max_attempts, t.error, t.request_id, t.adhoc]);
  }

  // Redrawn only when something in it changed (or a running task's
  // duration grew), and then a row whose task did not change is kept (a
  // running one gets its new duration in place), so a row, and its retry
  // button, is never replaced under the pointer: a click whose press and
  // release land on different elements is no click.
  function renderTasks() {
    if (state.drawnVersion === state.tasksVersion && !state.drawnRunning) return;
    state.drawnVersion = state.tasksVersion;
    const fState = $("filter-state").value, fName = $("filter-name").value,
      fId = $("filter-id").value.trim();
    const list = Array.from(state.tasks.values())
      .filter((t) => (!fState || t.state === fState) && (!fName || t.name === fName) &&
        (!fId || String(t.id) === fId))
      .sort((a, b) => b.id - a.id);
    const body = $("tasks-body"), shown = list.slice(0, MAX_ROWS), keep = new Map();
    let at = body.firstChild;
    for (const t of shown) {
      const old = drawnRows.get(t.id), key = rowKey(t);
      let tr;
      if (old && old[1] === key) {
        tr = old[0];
        const dur = tr.children[4], text = taskDuration(t);
        if (dur.textContent !== text) dur.textContent = text;
      } else {
        tr = taskRow(t);
      }
      keep.set(t.id, [tr, key]);
      if (tr === at) at = at.nextSibling;
      else body.insertBefore(tr, at);
    }
    while (at) {
      const next = at.nextSibling;
      body.removeChild(at);
      at = next;
    }
    drawnRows.clear();
    for (const [id, v] of keep) drawnRows.set(id, v);
    state.drawnRunning = shown.some((t) => t.state === "running");
    $("task-count").textContent = (list.length > MAX_ROWS ? "the newest " + MAX_ROWS + " of " : "") +
      list.length + " matching, of " + state.tasks.size + " records";
  }

  // A failed named task, or a dead letter the journal holds (found by id,
  // "source": "journal"), can be queued again.
  function retriable(t) {
    return (t.state === "failed" || t.state === "dead") && !t.adhoc;
  }

  function taskRow(t) {
    const tr = el("tr", null, "task " + t.state);
    tr.dataset.id = String(t.id);
    tr.dataset.state = t.state;
    tr.appendChild(el("td", t.id, "num"));
    tr.appendChild(el("td", t.name));
    tr.appendChild(el("td", t.state, "state"));
    tr.appendChild(el("td", t.attempts + "/" + t.max_attempts, "num"));
    tr.appendChild(el("td", taskDuration(t), "num"));
    tr.appendChild(el("td", t.error === null ? "" : t.error, "error"));
    tr.appendChild(el("td", t.request_id === null ? "" : t.request_id, "rid"));
    const td = el("td");
    if (retriable(t)) td.appendChild(retryButton(t.id));
    tr.appendChild(td);
    tr.addEventListener("click", function () {
      state.selected = t.id;
      renderDetail();
    });
    return tr;
  }

  function renderDetail() {
    const box = $("task-detail"), t = state.selected !== null ? state.tasks.get(state.selected) : null;
    if (!t) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    $("detail-id").textContent = "#" + t.id;
    $("detail-name").textContent = t.name;
    $("detail-state").textContent = t.state;
    $("detail-state").className = "state " + t.state;
    $("detail-retry").hidden = !retriable(t);
    const dl = $("detail-fields");
    clear(dl);
    const fields = [["attempts", t.attempts + " of " + t.max_attempts], ["payload", t.payload_bytes + " bytes"],
      ["request id", t.request_id], ["mode", t.mode], ["generation", t.generation],
      ["delivered", t.delivered === null ? "-" : String(t.delivered)], ["duration", taskDuration(t)]];
    for (const f of fields) {
      dl.appendChild(el("dt", f[0]));
      dl.appendChild(el("dd", f[1] === null || f[1] === undefined ? "-" : f[1]));
    }
    const ol = $("detail-timeline");
    clear(ol);
    for (const step of [["created", t.created_at], ["started", t.started_at], ["finished", t.finished_at]])
      if (step[1]) ol.appendChild(el("li", step[0] + " " + step[1]));
    const logs = $("detail-logs");
    clear(logs);
    const LEVELS = ["debug", "info", "warn", "error"];
    for (const l of state.logs.get(t.id) || [])
      logs.appendChild(el("li", new Date(l[1]).toISOString() + " " + (LEVELS[l[0]] || l[0]) + " " + l[2],
        l[0] >= 2 ? "bad" : ""));
    if (!logs.firstChild) logs.appendChild(el("li", "none seen", "muted"));
    $("detail-error").textContent = t.error === null ? "none" : t.error;
    $("detail-result").textContent = t.result ? t.result.status + " " + (t.result.content_type || "") +
      " (" + t.result.length + " bytes)\n" + t.result.body : "none";
  }

  function renderRoutes() {
    const body = $("routes-body");
    clear(body);
    for (const r of state.routes) {
      const tr = el("tr");
      tr.appendChild(el("td", r.method));
      tr.appendChild(el("td", r.path));
      tr.appendChild(el("td", r.tasks, "num"));
      tr.appendChild(el("td", r.requests, "num"));
      const err = el("td", r.errors, "num");
      if (r.errors > 0) err.classList.add("bad");
      tr.appendChild(err);
      tr.appendChild(el("td", r.requests ? fmtUs(r.p50_us) : "-", "num"));
      tr.appendChild(el("td", r.requests ? fmtUs(r.p99_us) : "-", "num"));
      body.appendChild(tr);
    }
  }

  function renderDevLoop() {
    const body = $("reloads-body");
    clear(body);
    for (const r of state.reloads.slice().reverse()) {
      const tr = el("tr", null, r.ok ? "" : "failed");
      tr.appendChild(el("td", r.at));
      tr.appendChild(el("td", r.kind));
      tr.appendChild(el("td", r.ok ? r.generation : "-", "num"));
      tr.appendChild(el("td", r.ok ? fmtNum(r.load_ms, 1) + " ms" : "-", "num"));
      const res = el("td");
      if (r.ok) res.textContent = "serving";
      else res.appendChild(el("pre", (r.error || "").split("\n")[0], "error"));
      tr.appendChild(res);
      body.appendChild(tr);
    }
    // The last build or reload error stays on top until a load succeeds.
    const last = state.reloads.length ? state.reloads[state.reloads.length - 1] : null;
    const banner = $("build-error");
    if (last && !last.ok) {
      banner.hidden = false;
      $("build-error-when").textContent = "(" + last.kind + ", " + last.at + ")";
      $("build-error-text").textContent = last.error;
    } else {
      banner.hidden = true;
    }
    const s = state.stats, crash = s ? s.last_crash : null;
    $("crash").hidden = !crash;
    if (crash) {
      $("crash-when").textContent = "(" + crash.when + ", " + crash.signal + ")";
      $("crash-text").textContent = crash.what + "\n" + crash.report;
      $("crash-summary").textContent = s.crashes + " crash" + (s.crashes === 1 ? "" : "es") +
        "; serving process " + s.serving_processes + " (pid " + s.pid + ")";
    } else {
      $("crash-summary").textContent = "none";
    }
  }

  // ---- the retry action -------------------------------------------------------------

  function say(text, bad) {
    const m = $("action-msg");
    m.hidden = false;
    m.textContent = text;
    m.className = "msg" + (bad ? " bad" : "");
  }

  function retry(id) {
    fetch("/_bgserve/tasks/" + encodeURIComponent(id) + "/retry", {
      method: "POST",
      headers: { "X-Bgserve-Action": "retry" },
    }).then(function (r) {
      return r.json().then(function (body) {
        if (r.status === 202) {
          say("task " + id + " queued again as task " + body.id);
          state.selected = body.id;
        } else {
          say("retry of task " + id + " refused (" + r.status + "): " + body.error, true);
        }
        scheduleRender();
      });
    }).catch(function (e) {
      say("retry of task " + id + " failed: " + e, true);
    });
  }

  // ---- wiring -----------------------------------------------------------------------

  function filtersChanged() {
    state.tasksVersion++;
    scheduleRender();
  }
  for (const id of ["filter-state", "filter-name"]) $(id).addEventListener("change", filtersChanged);
  // A task the page does not hold (older than its 500 records) is asked
  // for by id.
  $("filter-id").addEventListener("input", function () {
    filtersChanged();
    const id = $("filter-id").value.trim();
    if (!/^[0-9]+$/.test(id) || state.tasks.has(Number(id))) return;
    fetch("/_bgserve/tasks/" + id).then(function (r) {
      if (r.status !== 200) {
        say("no task " + id + " (unknown, or its record was evicted)", true);
        return null;
      }
      return r.json();
    }).then(function (rec) {
      if (!rec) return;
      applyTasks([rec]);
      scheduleRender();
    }).catch(function (e) {
      say("cannot ask for task " + id + ": " + e, true);
    });
  });
  $("detail-close").addEventListener("click", function () {
    state.selected = null;
    scheduleRender();
  });
  $("detail-retry").addEventListener("click", function () {
    if (state.selected !== null) retry(state.selected);
  });

  const conn = $("conn");
  const es = new EventSource("/_bgserve/events");
  es.addEventListener("snapshot", function (ev) {
    apply(JSON.parse(ev.data), true);
  });
  es.addEventListener("update", function (ev) {
    apply(JSON.parse(ev.data), false);
  });
  es.onopen = function () {
    conn.textContent = "live";
    conn.className = "conn on";
  };
  es.onerror = function () {
    conn.textContent = "reconnecting";
    conn.className = "conn off";
  };
})();
