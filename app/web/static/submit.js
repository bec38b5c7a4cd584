// The submit page: the config goes to POST /api/training as it is (YAML or JSON); each problem of a 422 is
// shown under the config line its `param` names (`training.learning_rate` -> the learning_rate key inside
// training).
"use strict";

(function () {
  const $ = function (id) { return document.getElementById(id); };

  function escapeRegExp(text) {
    return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  }

  // The 0-based line of the key a dotted param names, searching each segment after the previous one's line;
  // a segment that is not there (a missing key) leaves the error at its parent's line. -1: not found at all.
  function lineOf(lines, param) {
    let at = -1;
    for (const segment of String(param || "").split(".")) {
      if (!segment || /^\d+$/.test(segment)) continue;
      const key = new RegExp("^\\s*(?:-\\s*)?[\"']?" + escapeRegExp(segment) + "[\"']?\\s*:|[{,]\\s*\"" + escapeRegExp(segment) + "\"\\s*:");
      let found = -1;
      for (let i = at + 1; i < lines.length; i++) {
        if (key.test(lines[i])) { found = i; break; }
      }
      if (found < 0) break;
      at = found;
    }
    return at;
  }

  function showProblems(text, problems) {
    const lines = text.split("\n");
    const under = new Map(); // line -> problems
    for (const problem of problems) {
      const line = lineOf(lines, problem.param);
      problem.line = line;
      if (!under.has(line)) under.set(line, []);
      under.get(line).push(problem);
    }
    const list = $("config-annotated");
    list.replaceChildren();
    const addErrors = function (line) {
      for (const problem of under.get(line) || []) {
        const li = document.createElement("li");
        li.className = "field-error";
        li.id = "problem-" + problems.indexOf(problem);
        li.dataset.param = problem.param || "";
        li.dataset.line = String(line + 1);
        const name = document.createElement("strong");
        name.textContent = problem.param || "config";
        li.append(name, ": " + problem.message);
        list.append(li);
      }
    };
    addErrors(-1);
    lines.forEach(function (line, i) {
      const li = document.createElement("li");
      li.className = "config-line";
      li.dataset.line = String(i + 1);
      const number = document.createElement("span");
      number.className = "line-number";
      number.setAttribute("aria-hidden", "true");
      number.textContent = String(i + 1);
      const code = document.createElement("code");
      code.textContent = line || " ";
      li.append(number, code);
      if (under.has(i)) li.classList.add("has-error");
      list.append(li);
      addErrors(i);
    });
    list.hidden = false;
  }

  function summarize(error, problems) {
    const box = $("submit-summary");
    box.replaceChildren();
    box.className = "error-summary";
    const heading = document.createElement("p");
    heading.textContent = problems.length > 1 ? problems.length + " problems; each is shown under its line below." : error.message;
    box.append(heading);
    const ul = document.createElement("ul");
    problems.forEach(function (problem, i) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = "#problem-" + i;
      a.textContent = (problem.param || "config") + (problem.line >= 0 ? " (line " + (problem.line + 1) + ")" : "");
      li.append(a, ": " + problem.message);
      ul.append(li);
    });
    box.append(ul);
  }

  async function submit(event) {
    event.preventDefault();
    const text = $("config-text").value;
    const json = /^\s*[{[]/.test(text);
    const button = $("submit-button");
    button.disabled = true;
    $("submit-summary").textContent = "Checking…";
    $("submit-summary").className = "";
    try {
      const response = await window.forge.api("/api/training", {
        method: "POST",
        headers: { "Content-Type": json ? "application/json" : "application/yaml" },
        body: text,
      });
      if (response.status === 201) {
        const job = await response.json();
        $("config-text").removeAttribute("aria-invalid");
        $("config-annotated").hidden = true;
        const box = $("submit-summary");
        box.replaceChildren("Started ");
        const a = document.createElement("a");
        a.href = "/jobs/" + encodeURIComponent(job.id);
        a.id = "started-job";
        a.textContent = "job " + job.id;
        box.append(a, ".");
        box.className = "ok";
        return;
      }
      const error = await window.forge.errorOf(response);
      const problems = (error.details && error.details.length ? error.details : [error]).map(function (d) {
        const where = d.file ? d.file + (d.line ? ":" + d.line : "") + ": " : "";
        return { param: d.param, message: d.file && d.message.startsWith(d.file) ? d.message : where + d.message };
      });
      $("config-text").setAttribute("aria-invalid", "true");
      showProblems(text, problems);
      summarize(error, problems);
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("submit-form").addEventListener("submit", submit);
    $("reset-button").addEventListener("click", function () {
      $("config-text").value = $("config-text").defaultValue;
      $("config-annotated").hidden = true;
      $("submit-summary").replaceChildren();
    });
    $("config-file").addEventListener("change", async function (event) {
      const file = event.target.files[0];
      if (file) $("config-text").value = await file.text();
    });
  });
})();
