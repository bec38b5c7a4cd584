// Shared by every page: the API token (asked once, kept in this tab's sessionStorage, sent only as the
// Authorization header), a fetch wrapper that adds it, and the `forge:ready` event that starts the page's
// calls once the token is known. No call is made before then.
"use strict";

(function () {
  const KEY = "forge-api-token";
  const authRequired = document.body.dataset.authRequired === "true";
  let ready = false;

  function token() {
    return authRequired ? sessionStorage.getItem(KEY) : null;
  }

  function headers(extra) {
    const out = new Headers(extra || {});
    const t = token();
    if (t) out.set("Authorization", "Bearer " + t);
    return out;
  }

  function askForToken(message) {
    ready = false;
    sessionStorage.removeItem(KEY);
    const form = document.getElementById("token-form");
    form.hidden = false;
    document.getElementById("token-error").textContent = message || "";
    document.getElementById("token-input").focus();
  }

  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = headers(opts.headers);
    const response = await fetch(path, opts);
    if (response.status === 401 && authRequired) askForToken("The server refused the token; enter it again.");
    return response;
  }

  // A JSON error body in the API's shape ({code, message, param, details}), or one made from the status.
  async function errorOf(response) {
    try {
      const body = await response.json();
      if (body && body.message) return body;
    } catch (_) { /* not JSON */ }
    return { code: "http_" + response.status, message: response.status + " " + response.statusText, param: null };
  }

  function start() {
    ready = true;
    document.getElementById("token-form").hidden = true;
    document.body.dispatchEvent(new CustomEvent("forge:ready"));
  }

  document.addEventListener("htmx:configRequest", function (event) {
    const t = token();
    if (t) event.detail.headers["Authorization"] = "Bearer " + t;
  });
  document.addEventListener("htmx:responseError", function (event) {
    if (event.detail.xhr.status === 401 && authRequired) askForToken("The server refused the token; enter it again.");
  });

  // Downloads with a token: a plain link cannot send the header, so fetch the file and save it.
  document.addEventListener("click", async function (event) {
    const link = event.target.closest && event.target.closest("a.download");
    if (!link || !token()) return;
    event.preventDefault();
    const response = await api(link.getAttribute("href"));
    if (!response.ok) return;
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = link.textContent.split("/").pop();
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
  });

  document.addEventListener("DOMContentLoaded", function () {
    document.getElementById("token-form").addEventListener("submit", async function (event) {
      event.preventDefault();
      const value = document.getElementById("token-input").value.trim();
      if (!value) return;
      // Checked with the cheapest authenticated call before it is kept.
      const response = await fetch("/api/training", { headers: { Authorization: "Bearer " + value } });
      if (response.status === 401) {
        document.getElementById("token-error").textContent = "That token was refused.";
        return;
      }
      sessionStorage.setItem(KEY, value);
      document.getElementById("token-input").value = "";
      start();
    });
    // After htmx has bound its triggers (its DOMContentLoaded handler ran first).
    setTimeout(function () {
      if (authRequired && !token()) askForToken("");
      else start();
    }, 0);
  });

  window.forgeReady = function () { return ready && !document.hidden; };
  window.forge = { api: api, errorOf: errorOf, headers: headers, isReady: function () { return ready; } };
})();
