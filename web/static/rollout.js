/*
 * The rollout page: keeps the summary grid current by polling the rollout's JSON, and
 * gives each server its live log (a .log-viewer from app.js) as soon as its batch
 * starts. Loaded only by rollout.hbs.
 */
(function () {
  "use strict";

  var STATE_CLASSES = {
    pending: "text-bg-secondary",
    running: "text-bg-primary",
    succeeded: "text-bg-success",
    failed: "text-bg-danger",
    skipped: "text-bg-dark"
  };
  var FINAL = ["succeeded", "failed", "stopped"];

  function setBadge(node, state) {
    if (!node) return;
    node.textContent = state;
    node.dataset.state = state;
    Object.keys(STATE_CLASSES).forEach(function (k) {
      node.classList.remove(STATE_CLASSES[k]);
    });
    node.classList.add(STATE_CLASSES[state] || "text-bg-secondary");
  }

  function cell(row, name) {
    return row.querySelector('[data-cell="' + name + '"]');
  }

  function startViewer(target, index) {
    var column = document.querySelector('[data-log-for="' + index + '"]');
    if (!column || !target.execution_id) return;
    var slot = column.querySelector("[data-log-slot]");
    if (!slot || slot.querySelector(".log-viewer")) return;
    slot.textContent = "";
    var viewer = document.createElement("div");
    viewer.className = "log-viewer";
    viewer.dataset.streamUrl = "/api/v1/executions/" + target.execution_id + "/stream";
    viewer.dataset.logUrl = "/api/v1/executions/" + target.execution_id + "/log";
    viewer.setAttribute("aria-label", "Output of " + target.name);
    slot.appendChild(viewer);
    if (window.dynserv && window.dynserv.LogViewer) {
      window.dynserv.logViewers = window.dynserv.logViewers || [];
      window.dynserv.logViewers.push(new window.dynserv.LogViewer(viewer));
    }
  }

  // The progress bar: each part's width is its share of the targets (set through the
  // DOM: the CSP forbids style attributes).
  function drawProgress(summary) {
    var bar = document.getElementById("rollout-progress");
    if (!bar) return;
    var total = summary ? summary.total : Number(bar.dataset.total) || 0;
    if (summary) bar.dataset.total = String(total);
    Array.prototype.forEach.call(bar.querySelectorAll("[data-progress-part]"), function (part) {
      var value = summary ? summary[part.dataset.progressPart] || 0 : Number(part.dataset.value) || 0;
      part.dataset.value = String(value);
      part.style.width = total > 0 ? (value * 100 / total) + "%" : "0%";
    });
    var done = summary ? summary.done : null;
    if (summary && done !== undefined) {
      var percent = total > 0 ? Math.floor(done * 100 / total) : 100;
      bar.setAttribute("aria-valuenow", String(percent));
      var text = document.getElementById("rollout-progress-text");
      if (text) text.textContent = done + " of " + total + " done";
    }
  }

  function render(root, rollout) {
    drawProgress(rollout.summary);
    var status = document.querySelector("[data-rollout-status]");
    if (status) {
      status.textContent = rollout.status;
      status.dataset.rolloutStatus = rollout.status;
      status.className = "badge " + (rollout.status === "succeeded" ? "text-bg-success" : rollout.status === "running" ? "text-bg-primary" : "text-bg-danger");
    }
    root.dataset.status = rollout.status;
    Object.keys(rollout.summary).forEach(function (key) {
      var node = root.querySelector('[data-count="' + key + '"]');
      if (node) node.textContent = String(rollout.summary[key]);
    });
    rollout.targets.forEach(function (target, index) {
      var row = root.querySelector('tr[data-target="' + index + '"]');
      if (!row) return;
      setBadge(cell(row, "state"), target.state);
      cell(row, "batch").textContent = target.batch ? String(target.batch) : "\u2014";
      var e = target.execution;
      cell(row, "exit").textContent = e && e.finished_at ? String(e.exit_code === null ? "\u2014" : e.exit_code) : "\u2014";
      cell(row, "duration").textContent = e && e.duration_s !== null && e.duration_s !== undefined ? e.duration_s + " s" : "\u2014";
      var link = cell(row, "link");
      if (target.execution_id && !link.querySelector("a")) {
        var a = document.createElement("a");
        a.href = "/executions/" + target.execution_id;
        a.textContent = "log";
        link.appendChild(a);
      }
      var reason = cell(row, "reason");
      if (target.reason && !reason) {
        reason = document.createElement("span");
        reason.dataset.cell = "reason";
        var badge = cell(row, "state");
        badge.parentNode.appendChild(document.createTextNode(" "));
        badge.parentNode.appendChild(reason);
      }
      if (reason) {
        reason.textContent = target.reason || "";
        reason.className = "small " + (target.state === "skipped" ? "text-body-secondary" : "text-danger");
      }
      if (target.state === "skipped") {
        var column = document.querySelector('[data-log-for="' + index + '"] [data-waiting]');
        if (column) column.textContent = target.reason || "Skipped.";
      }
      startViewer(target, index);
    });
  }

  // Read at once when the live channel (live.js) says this rollout moved on.
  var timer = null;

  function poll(root) {
    clearTimeout(timer);
    fetch(root.dataset.rolloutUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (resp) {
        return resp.ok ? resp.json() : null;
      })
      .then(function (rollout) {
        if (rollout) render(root, rollout);
        var done = rollout && FINAL.indexOf(rollout.status) !== -1 && rollout.summary.running === 0;
        // With the live channel open, events bring the changes and polling only backs it up.
        var live = document.documentElement.dataset.live === "open";
        clearTimeout(timer);
        if (!done) timer = setTimeout(function () { poll(root); }, live ? 5000 : 1000);
      })
      .catch(function () {
        clearTimeout(timer);
        timer = setTimeout(function () { poll(root); }, 3000);
      });
  }

  function start() {
    var root = document.getElementById("rollout");
    if (!root) return;
    // Badges get their colours from the states rendered by the server.
    Array.prototype.forEach.call(root.querySelectorAll('[data-cell="state"]'), function (node) {
      setBadge(node, node.textContent.trim());
    });
    drawProgress(null);
    var id = root.dataset.rolloutUrl.split("/").pop();
    document.addEventListener("dynserv:live", function (e) {
      var d = e.detail || {};
      if (d.topic === "resync" || (d.topic === "rollouts" && d.data && d.data.id === id)) poll(root);
    });
    poll(root);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
