// The datasets page: upload through POST /api/training/datasets and show its line-numbered report.
"use strict";

(function () {
  const $ = function (id) { return document.getElementById(id); };

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function problemTable(problems) {
    const table = el("table", undefined, "problems");
    const head = el("tr");
    for (const h of ["Line", "Field", "Problem"]) {
      const th = el("th", h);
      th.scope = "col";
      head.append(th);
    }
    table.append(el("thead"));
    table.tHead.append(head);
    const body = el("tbody");
    for (const p of problems) {
      const tr = el("tr", undefined, p.severity === "warning" ? "warning" : "");
      tr.dataset.line = String(p.line || "");
      tr.append(el("td", p.line ? String(p.line) : "–", "num"), el("td", p.field || "–"), el("td", p.message));
      body.append(tr);
    }
    table.append(body);
    const wrap = el("div", undefined, "table-wrap");
    wrap.append(table);
    return wrap;
  }

  function showReport(ok, summary, files, problems) {
    const box = $("dataset-report");
    box.replaceChildren(el("p", summary, ok ? "ok" : "error"));
    for (const f of files || []) {
      box.append(el("p", f.file + ": " + f.rows + " rows, " + f.used + " used, " + f.bad + " bad, " + f.truncated +
        " truncated" + (f.total_tokens ? ", " + f.total_tokens + " tokens" : "") + (f.format ? " (" + f.format + ")" : "")));
    }
    if (problems.length) box.append(problemTable(problems));
  }

  async function upload(event) {
    event.preventDefault();
    const form = $("dataset-form");
    const data = new FormData(form);
    for (const key of ["name", "split"]) if (!data.get(key)) data.delete(key);
    $("dataset-button").disabled = true;
    $("dataset-report").textContent = "Uploading and checking every row…";
    try {
      const response = await window.forge.api("/api/training/datasets", { method: "POST", body: data });
      if (response.ok) {
        const body = await response.json();
        const problems = body.report.files.flatMap(function (f) { return f.problems; });
        let summary = "Stored " + body.dataset.path + ". " + body.report.message;
        if (body.splits) summary += " Splits: " + Object.entries(body.split_rows || {}).map(function (e) { return e[0] + " " + e[1]; }).join(", ") + " rows.";
        showReport(true, summary, body.report.files, problems);
        loadList();
        return;
      }
      const error = await window.forge.errorOf(response);
      const problems = (error.details || []).filter(function (d) { return d.line || d.field; }).map(function (d) {
        return { line: d.line, field: d.field, message: d.message, severity: "error" };
      });
      showReport(false, error.message, [], problems);
    } finally {
      $("dataset-button").disabled = false;
    }
  }

  async function loadList() {
    const response = await window.forge.api("/api/training/datasets");
    if (!response.ok) return;
    const body = await response.json();
    const items = Array.isArray(body) ? body : body.items || [];
    const box = $("dataset-list");
    if (!items.length) {
      box.replaceChildren(el("p", "No .jsonl files under data/ yet.", "muted"));
      return;
    }
    const table = el("table");
    const head = el("tr");
    for (const h of ["File", "Format", "Rows", "Valid", "Tokens"]) {
      const th = el("th", h);
      th.scope = "col";
      head.append(th);
    }
    table.append(el("thead"));
    table.tHead.append(head);
    const tbody = el("tbody");
    for (const d of items) {
      const tr = el("tr");
      tr.append(el("td", d.path), el("td", d.format || "–"), el("td", String(d.rows ?? "–"), "num"),
        el("td", String(d.valid_rows ?? d.used ?? "–"), "num"), el("td", String(d.total_tokens ?? "–"), "num"));
      tbody.append(tr);
    }
    table.append(tbody);
    const wrap = el("div", undefined, "table-wrap");
    wrap.append(table);
    box.replaceChildren(wrap);
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("dataset-form").addEventListener("submit", upload);
  });
  document.body.addEventListener("forge:ready", loadList);
})();
