/*
 * Dynamic Servers: a server request's page follows the request live.
 *
 * #request-page[data-request-live="/api/v1/requests/ID"] is polled every few seconds;
 * when the status or the number of steps changes, the status badge and the list of
 * steps are redrawn from the JSON (as text, never HTML), and the cards marked
 * [data-when-status="pending …"] are shown only in the statuses they name.
 */
(function () {
  "use strict";

  var POLL_MS = 3000;
  var CLASSES = {
    pending: "text-bg-warning",
    approved: "text-bg-info",
    provisioning: "text-bg-primary",
    deployed: "text-bg-success",
    rejected: "text-bg-secondary",
    failed: "text-bg-danger"
  };

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function drawHistory(list, history) {
    list.textContent = "";
    history.forEach(function (step) {
      var item = el("li", "list-group-item small");
      item.setAttribute("data-step", step.action);
      item.appendChild(el("span", "fw-semibold text-capitalize", step.label));
      item.appendChild(document.createTextNode(" by "));
      var by = el("span", null, step.by);
      by.setAttribute("data-by", "");
      item.appendChild(by);
      item.appendChild(document.createTextNode(" "));
      item.appendChild(el("span", "badge text-bg-dark border ms-1", step.to));
      var when = el("div", "text-body-secondary");
      var time = el("time", null, step.at);
      time.setAttribute("data-relative", "");
      time.setAttribute("datetime", step.at);
      when.appendChild(time);
      item.appendChild(when);
      if (step.note) {
        var note = el("div", "mt-1", step.note);
        note.setAttribute("data-note", "");
        note.style.whiteSpace = "pre-wrap";
        item.appendChild(note);
      }
      list.appendChild(item);
    });
    if (window.dynserv && window.dynserv.refreshRelativeTimes) window.dynserv.refreshRelativeTimes();
  }

  function applyStatus(root, status) {
    root.setAttribute("data-status", status);
    var badge = document.getElementById("request-status");
    if (badge) {
      badge.textContent = status;
      badge.className = "badge fs-6 " + (CLASSES[status] || "text-bg-secondary");
    }
    Array.prototype.forEach.call(root.querySelectorAll("[data-when-status]"), function (node) {
      var wanted = node.getAttribute("data-when-status").split(/\s+/);
      node.hidden = wanted.indexOf(status) === -1;
    });
  }

  function follow(root) {
    var url = root.getAttribute("data-request-live");
    var list = document.getElementById("request-history");
    var state = root.querySelector("[data-live-state]");
    var known = {
      status: root.getAttribute("data-status"),
      steps: Number(root.getAttribute("data-history-length")) || 0
    };
    var busy = false;
    function poll() {
      if (busy || document.hidden) return;
      busy = true;
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) throw new Error("status " + response.status);
          return response.json();
        })
        .then(function (request) {
          if (state) state.textContent = "live";
          // The server appears once provisioning made (or found) it.
          var server = document.getElementById("request-server");
          if (server && request.server_id && !server.querySelector("a")) {
            server.textContent = "";
            var link = el("a", null, "open the server");
            link.href = "/servers/" + encodeURIComponent(request.server_id);
            server.appendChild(link);
          }
          var history = Array.isArray(request.history) ? request.history : [];
          if (request.status !== known.status || history.length !== known.steps) {
            known.status = request.status;
            known.steps = history.length;
            root.setAttribute("data-history-length", String(history.length));
            applyStatus(root, request.status);
            if (list) drawHistory(list, history);
          }
        })
        .catch(function () {
          if (state) state.textContent = "reconnecting…";
        })
        .then(function () {
          busy = false;
        });
    }
    applyStatus(root, known.status);
    setInterval(poll, POLL_MS);
    // A move of the request is notified: read it at once (live.js).
    document.addEventListener("dynserv:live", function (e) {
      var topic = e.detail && e.detail.topic;
      if (topic === "notifications" || topic === "resync") poll();
    });
  }

  function start() {
    var root = document.querySelector("[data-request-live]");
    if (root) follow(root);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
