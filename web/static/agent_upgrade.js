/*
 * The agent upgrade page: colours each agent's status and, while the upgrade runs,
 * polls its JSON every two seconds to show where each agent stands. Loaded only by
 * agent_upgrade.hbs.
 */
(function () {
  "use strict";

  var STATE_CLASSES = {
    pending: "text-bg-secondary",
    sending: "text-bg-info",
    waiting_for_jobs: "text-bg-warning",
    restarting: "text-bg-primary",
    running: "text-bg-primary",
    succeeded: "text-bg-success",
    failed: "text-bg-danger",
    skipped: "text-bg-dark"
  };

  function setBadge(node, state) {
    if (!node) return;
    node.textContent = state;
    node.dataset.state = state;
    Object.keys(STATE_CLASSES).forEach(function (k) {
      node.classList.remove(STATE_CLASSES[k]);
    });
    node.classList.add(STATE_CLASSES[state] || "text-bg-secondary");
  }

  function setDetails(cell, agent) {
    if (!cell) return;
    cell.textContent = "";
    if (agent.error) {
      var span = document.createElement("span");
      span.className = "text-danger";
      span.textContent = agent.error;
      cell.appendChild(span);
    } else if (agent.note) {
      cell.textContent = agent.note;
    }
  }

  function apply(upgrade) {
    setBadge(document.getElementById("upgrade-status"), upgrade.status);
    (upgrade.agents || []).forEach(function (agent) {
      var row = document.querySelector('[data-upgrade-agent="' + agent.agent + '"]');
      if (!row) return;
      setBadge(row.querySelector('[data-cell="status"]'), agent.status);
      setDetails(row.querySelector('[data-cell="details"]'), agent);
    });
  }

  function init() {
    var root = document.getElementById("agent-upgrade");
    if (!root) return;
    setBadge(document.getElementById("upgrade-status"), root.dataset.status);
    document.querySelectorAll('[data-cell="status"]').forEach(function (node) {
      setBadge(node, node.dataset.state);
    });
    if (root.dataset.status !== "running") return;
    var timer = setInterval(function () {
      fetch(root.dataset.upgradeUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (upgrade) {
          if (!upgrade) return;
          apply(upgrade);
          if (upgrade.status !== "running") clearInterval(timer);
        })
        .catch(function () { /* the next tick tries again */ });
    }, 2000);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
