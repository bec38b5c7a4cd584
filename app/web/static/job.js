// The job page: the live curve from the job's event stream (read with fetch(): EventSource cannot send the
// Authorization header), the job's status polled for phase, progress and ETA, and the actions.
"use strict";

(function () {
  const jobId = document.body.dataset.jobId;
  const base = "/api/training/jobs/" + encodeURIComponent(jobId);
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const POLL_MS = 1500;
  const CHART_HEIGHT = 260; // the box is fixed in app.css: updates never move the page

  const byStep = new Map(); // step -> {loss, eval_loss, learning_rate}
  let chart = null;
  let drawQueued = false;
  let job = null;
  let seen = { status: null, phase: null, evaluation: null };
  let source = "waiting for data";
  let polling = false; // no events API on this server: the curve is fed from the job's own fields

  const $ = function (id) { return document.getElementById(id); };
  const sleep = function (ms) { return new Promise(function (r) { setTimeout(r, ms); }); };
  const num = function (v) { return typeof v === "number" && isFinite(v) ? v : null; };

  // ------------------------------------------------------------------ the curve

  function makeChart() {
    const box = $("curve");
    const opts = {
      width: box.clientWidth || 600,
      height: CHART_HEIGHT,
      scales: { x: { time: false } },
      axes: [
        { label: "step" },
        { label: "loss", scale: "y", size: 60 },
        { label: "learning rate", scale: "lr", side: 1, size: 70, grid: { show: false },
          values: function (u, vals) { return vals.map(function (v) { return v.toExponential(1); }); } },
      ],
      series: [
        { label: "step" },
        { label: "loss", scale: "y", stroke: "#1f5fbf", width: 2 },
        { label: "eval loss", scale: "y", stroke: "#c2410c", width: 2, spanGaps: true,
          points: { show: true, size: 6 } },
        { label: "learning rate", scale: "lr", stroke: "#6b7280", width: 1, dash: [4, 4] },
      ],
    };
    chart = new uPlot(opts, [[], [], [], []], box);
    new ResizeObserver(function () {
      chart.setSize({ width: box.clientWidth, height: CHART_HEIGHT });
    }).observe(box);
  }

  function addPoint(step, metrics) {
    if (typeof step !== "number") return;
    const point = byStep.get(step) || {};
    for (const key of ["loss", "eval_loss", "learning_rate"]) {
      if (num(metrics[key]) !== null) point[key] = metrics[key];
    }
    if (Object.keys(point).length) byStep.set(step, point);
    if (!drawQueued) {
      drawQueued = true;
      requestAnimationFrame(draw);
    }
  }

  function draw() {
    drawQueued = false;
    const steps = Array.from(byStep.keys()).sort(function (a, b) { return a - b; });
    const pick = function (k) { return steps.map(function (s) { const v = byStep.get(s)[k]; return v === undefined ? null : v; }); };
    if (chart) chart.setData([steps, pick("loss"), pick("eval_loss"), pick("learning_rate")]);
    $("curve-points").textContent = String(steps.length);
    $("curve-source").textContent = source;
    $("curve").dataset.points = String(steps.length);
  }

  // The stream: `id:`, `event:`, `data:` blocks separated by a blank line; `:` lines are keep-alives.
  function parseBlock(block) {
    const out = { id: null, data: [] };
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "id") out.id = value;
      else if (field === "data") out.data.push(value);
    }
    return out;
  }

  function onEvent(event) {
    if (event.type === "metrics") {
      const data = event.data || {};
      addPoint(data.step, Object.assign({}, data, data.metrics || {}));
    } else {
      refreshJob();
    }
  }

  // Returns true when the stream ended with the job's terminal event, false when the server has no stream.
  async function streamEvents() {
    let last = null;
    let ended = false;
    while (!ended) {
      let response;
      try {
        const headers = last ? { "Last-Event-ID": last } : {};
        response = await window.forge.api(base + "/events/stream", { headers: headers });
      } catch (_) {
        await sleep(2000);
        continue;
      }
      if (response.status === 404 || response.status === 405) {
        const body = await window.forge.errorOf(response);
        if (body.param !== "job_id") return false; // no events API on this server
        showError(body.message);
        return true;
      }
      if (!response.ok || !response.body) {
        await sleep(2000);
        continue;
      }
      source = "live from the event stream";
      draw();
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let closed = false; // by the server, as opposed to dropped
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) {
            closed = true;
            break;
          }
          buffer = (buffer + value).replace(/\r\n?/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = parseBlock(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
            if (!block.data.length) continue;
            if (block.id) last = block.id;
            const event = JSON.parse(block.data.join("\n"));
            onEvent(event);
            if (TERMINAL.has(event.type)) ended = true;
          }
        }
      } catch (_) { /* dropped: reconnect below with Last-Event-ID */ }
      if (ended) break;
      // The server closes the stream once the job has ended and every event is sent; a job that ended before
      // events were recorded has no terminal event, so then the job's own status says when to stop.
      if (closed) {
        const now = await refreshJob();
        if (now && TERMINAL.has(now.status)) break;
      }
      await sleep(1000);
    }
    if (byStep.size === 0) await loadHistory(); // a job with no metrics events
    else source = "complete (from the event stream)";
    draw();
    return true;
  }

  // A finished job's whole curve, from its training statistics (for servers without the events API).
  let historyLoaded = false;
  async function loadHistory() {
    if (historyLoaded) return;
    historyLoaded = true;
    const response = await window.forge.api(base + "/artifacts/metrics/training-stats.json");
    if (!response.ok) return;
    const stats = await response.json();
    for (const entry of stats.log_history || []) addPoint(entry.step, entry);
    source = "complete (from metrics/training-stats.json)";
    draw();
  }

  // ------------------------------------------------------------------ status, results, log

  function showError(message) {
    const el = $("job-error");
    el.textContent = message || "";
    el.hidden = !message;
  }

  function eta(seconds) {
    if (num(seconds) === null) return "–";
    const s = Math.round(seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? h + "h" + String(m).padStart(2, "0") + "m" : m ? m + "m" + String(r).padStart(2, "0") + "s" : r + "s";
  }

  function render(j) {
    const status = $("job-status");
    status.textContent = j.status;
    status.className = "status status-" + j.status;
    $("job-model").textContent = (j.config && j.config.model && j.config.model.name) || "–";
    let phase = j.phase;
    if (j.evaluation && (j.phase === "baseline" || j.phase === "evaluate")) {
      phase += " (" + j.evaluation.done + "/" + j.evaluation.total + " answers)";
    }
    $("job-phase").textContent = phase;
    $("job-step").textContent = j.step + " / " + (j.total_steps || "?");
    $("job-epoch").textContent = j.total_epochs ? j.epoch.toFixed(2) + " / " + j.total_epochs : j.epoch.toFixed(2);
    $("job-loss").textContent = num(j.loss) === null ? "–" : j.loss.toFixed(4);
    $("job-eta").textContent = TERMINAL.has(j.status) ? "–" : eta(j.eta_seconds);
    let fraction = 0;
    if (j.status === "succeeded") fraction = 1;
    else if (j.phase === "training" && j.total_steps) fraction = j.step / j.total_steps;
    else if (num(j.phase_progress) !== null) fraction = j.phase_progress;
    $("job-progress").value = fraction;
    $("job-detail").textContent = j.error ? j.error.code + ": " + j.error.message : (j.phase_detail || "\u00a0");
    $("job-detail").classList.toggle("error", !!j.error);

    const active = j.status === "queued" || j.status === "running";
    $("cancel-button").disabled = !active;
    $("resume-button").disabled = !(j.status === "failed" || j.status === "cancelled");
    $("export-button").disabled = !(j.status === "succeeded" && j.kind === "training");
  }

  async function refreshJob() {
    let response;
    try {
      response = await window.forge.api(base);
    } catch (_) {
      return job;
    }
    if (!response.ok) {
      if (response.status !== 401) showError((await window.forge.errorOf(response)).message);
      return job;
    }
    job = await response.json();
    showError("");
    render(job);
    if (polling && job.step > 0) addPoint(job.step, job);
    const evaluation = job.evaluation ? job.evaluation.stage + job.evaluation.done : null;
    if (job.status !== seen.status || job.phase !== seen.phase || evaluation !== seen.evaluation) {
      seen = { status: job.status, phase: job.phase, evaluation: evaluation };
      document.body.dispatchEvent(new CustomEvent("forge:results"));
    }
    return job;
  }

  let looping = false;
  async function pollLoop() {
    if (looping) return;
    looping = true;
    for (;;) {
      if (!document.hidden) {
        await refreshJob();
        document.body.dispatchEvent(new CustomEvent("forge:log"));
        if (job && TERMINAL.has(job.status)) break;
      }
      await sleep(POLL_MS);
    }
    looping = false;
    if (polling) await loadHistory();
  }

  // ------------------------------------------------------------------ actions

  async function act(path, body, done) {
    const message = $("action-message");
    message.textContent = "…";
    const options = { method: "POST" };
    if (body) {
      options.headers = { "Content-Type": "application/json" };
      options.body = JSON.stringify(body);
    }
    const response = await window.forge.api(base + path, options);
    if (!response.ok) {
      const error = await window.forge.errorOf(response);
      message.textContent = "Refused: " + error.message;
      message.className = "error";
      return;
    }
    message.className = "";
    done(await response.json(), message);
    await refreshJob();
    pollLoop(); // a resumed job is live again; a no-op while the loop runs
  }

  function bindActions() {
    $("cancel-button").addEventListener("click", function () {
      act("/cancel", null, function (j, m) {
        m.textContent = j.status === "cancelled" ? "Cancelled." : "Cancel requested: the job stops at the end of its current step.";
      });
    });
    $("resume-button").addEventListener("click", function () {
      act("/resume", null, function (j, m) {
        m.textContent = "Queued again" + (j.resume_from ? " from " + j.resume_from : "") + ".";
        if (!polling) streamEvents();
      });
    });
    $("export-form").addEventListener("submit", function (event) {
      event.preventDefault();
      const type = $("export-type").value;
      act("/exports", { gguf_quantization: type }, function (j, m) {
        m.textContent = "";
        m.append("Export queued: ");
        const a = document.createElement("a");
        a.href = "/jobs/" + encodeURIComponent(j.id);
        a.textContent = "job " + j.id + " (" + type + ")";
        m.append(a);
      });
    });
  }

  // ------------------------------------------------------------------ start

  document.addEventListener("DOMContentLoaded", function () {
    makeChart();
    draw();
    bindActions();
  });

  let started = false;
  document.body.addEventListener("forge:ready", async function () {
    if (started) return;
    started = true;
    const first = await refreshJob();
    if (!first) return;
    pollLoop();
    const streamed = await streamEvents();
    if (!streamed) {
      polling = true;
      source = "polled from the job's status (this server has no event stream)";
      draw();
      if (job && TERMINAL.has(job.status)) await loadHistory();
    }
  });
})();
