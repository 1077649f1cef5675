/*
 * Dynamic Servers: live pages. One server-sent-events stream per page
 * (GET /api/v1/events?topics=…, opened only when the page shows something live):
 *
 *   - agents:     [data-agent-state="AGENT_ID"] (Agents and Servers pages) follow the
 *                 agent connecting and leaving;
 *   - executions: rows tr[data-execution-id] of the executions list and the details of
 *                 an execution page ([data-live-execution]) are read again from
 *                 /api/v1/executions/ID when it changes status; Cancel goes once it ended;
 *                 when executions are created, the list ([data-live-executions]) on its
 *                 newest page reads its rows again (the page itself, same filters);
 *   - rollouts:   told to rollout.js (it reads the rollout again);
 *   - notifications: told to notifications.js (the bell reads the inbox again).
 *
 * Every event also goes out as a "dynserv:live" DOM event ({topic, data}) for other
 * scripts. After a `resync` (the stream fell behind) or a reconnect, what the page shows
 * is read again. Loaded by the page shell; does nothing on pages without live parts.
 */
(function () {
  "use strict";

  function all(css) {
    return Array.prototype.slice.call(document.querySelectorAll(css));
  }

  function topics() {
    var wanted = [];
    if (all("[data-agent-state]").length) wanted.push("agents");
    if (all("tr[data-execution-id]").length || all("[data-live-execution]").length ||
        document.querySelector("[data-live-executions]")) wanted.push("executions");
    if (document.querySelector("#rollout[data-rollout-url]")) wanted.push("rollouts");
    // The bell (notifications.js) of every signed-in page.
    if (document.querySelector(".ds-bell")) wanted.push("notifications");
    return wanted;
  }

  function formatTime(value) {
    if (!value) return "\u2014";
    var t = new Date(value);
    if (isNaN(t.getTime())) return "\u2014";
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return t.getUTCFullYear() + "-" + two(t.getUTCMonth() + 1) + "-" + two(t.getUTCDate()) + " " +
      two(t.getUTCHours()) + ":" + two(t.getUTCMinutes()) + " UTC";
  }

  function formatDuration(seconds) {
    return seconds === null || seconds === undefined || seconds === 0 ? "\u2014" : seconds + " s";
  }

  // ---- agents ----

  function setAgent(id, connected) {
    all('[data-agent-state="' + CSS.escape(id) + '"]').forEach(function (node) {
      var dot = node.querySelector(".status-dot");
      if (dot) {
        dot.classList.toggle("online", connected);
        dot.classList.toggle("offline", !connected);
      }
      var word = connected ? "connected" : node.dataset.offlineWord || "disconnected";
      var label = node.querySelector("[data-agent-word]");
      if (!label) {
        // The text after the dot becomes a label this script can rewrite.
        Array.prototype.slice.call(node.childNodes).forEach(function (child) {
          if (child.nodeType === 3 && child.textContent.trim()) child.remove();
        });
        label = document.createElement("span");
        label.dataset.agentWord = "";
        node.appendChild(document.createTextNode(" "));
        node.appendChild(label);
      }
      label.textContent = word;
      node.dataset.connected = connected ? "true" : "false";
    });
  }

  // ---- executions ----

  function showExecution(e) {
    all('tr[data-execution-id="' + CSS.escape(e.id) + '"]').forEach(function (row) {
      var badge = row.querySelector('[data-cell="status"]');
      if (badge) {
        badge.textContent = e.status;
        window.dynserv.setStatusBadge(badge, e.status);
      }
      var duration = row.querySelector('[data-cell="duration"]');
      if (duration) duration.textContent = formatDuration(e.duration_s);
      row.dataset.status = e.status;
    });
    all('[data-live-execution="' + CSS.escape(e.id) + '"]').forEach(function (details) {
      var field = function (name) { return details.querySelector('[data-field="' + name + '"]'); };
      if (field("started_at")) field("started_at").textContent = formatTime(e.started_at);
      if (field("finished_at")) field("finished_at").textContent = formatTime(e.finished_at);
      if (field("duration_s")) field("duration_s").textContent = formatDuration(e.duration_s);
      if (field("summary")) field("summary").textContent = e.summary || "";
      var exitCode = e.exit_code === undefined ? null : e.exit_code;
      window.dynserv.setExecutionStatus(e.status, e.finished_at ? exitCode : undefined);
      if (window.dynserv.FINAL_STATUSES.indexOf(e.status) !== -1) {
        all("[data-live-cancel]").forEach(function (form) { form.remove(); });
      }
    });
  }

  var reading = {};
  function readExecution(id) {
    if (reading[id]) return;
    reading[id] = true;
    fetch("/api/v1/executions/" + encodeURIComponent(id), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (resp) { return resp.ok ? resp.json() : null; })
      .then(function (e) {
        delete reading[id];
        if (e) showExecution(e);
      })
      .catch(function () { delete reading[id]; });
  }

  function shownExecutions() {
    var ids = all("tr[data-execution-id]").map(function (row) { return row.dataset.executionId; });
    all("[data-live-execution]").forEach(function (node) { ids.push(node.dataset.liveExecution); });
    return ids;
  }

  // The newest page of the list reads its rows again from the page itself (the same
  // filters, rendered by the server), at most once a second.
  var listReading = false;
  var listAgain = false;
  function readList() {
    var table = document.querySelector("table[data-live-executions]");
    if (!table || new URLSearchParams(window.location.search).get("cursor")) return;
    if (listReading) {
      listAgain = true;
      return;
    }
    listReading = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (resp) { return resp.ok ? resp.text() : null; })
      .then(function (html) {
        if (!html) return;
        var page = new DOMParser().parseFromString(html, "text/html");
        var rows = page.querySelector("table[data-live-executions] tbody");
        var current = table.querySelector("tbody");
        if (rows && current) current.replaceWith(document.importNode(rows, true));
      })
      .catch(function () {})
      .then(function () {
        setTimeout(function () {
          listReading = false;
          if (listAgain) {
            listAgain = false;
            readList();
          }
        }, 1000);
      });
  }

  function executionChanged(data) {
    if (!data) return;
    if (data.created) {
      readList();
      return;
    }
    if (!data.id) return;
    if (shownExecutions().indexOf(data.id) !== -1) readExecution(data.id);
  }

  // ---- the stream ----

  function tell(topic, data) {
    document.dispatchEvent(new CustomEvent("dynserv:live", { detail: { topic: topic, data: data } }));
  }

  // Reads again what the page shows (after a resync or a reconnect).
  function resync(wanted) {
    if (wanted.indexOf("agents") !== -1) {
      // Agent states come with the page: read it again (unless someone is typing).
      var active = document.activeElement;
      if (!active || ["INPUT", "SELECT", "TEXTAREA"].indexOf(active.tagName) === -1) {
        window.location.reload();
        return;
      }
    }
    readList();
    shownExecutions().forEach(readExecution);
    tell("resync", {});
  }

  function parse(message) {
    try {
      return JSON.parse(message.data);
    } catch (e) {
      return null;
    }
  }

  // One stream while the tab is visible: a hidden tab lets its connection go (a
  // browser holds few connections per server over HTTP/1.1) and reads the page's data
  // again when it comes back.
  var source = null;
  var opened = false;

  function connect(wanted) {
    source = new EventSource("/api/v1/events?topics=" + wanted.join(","));
    window.dynserv = window.dynserv || {};
    window.dynserv.liveSource = source;
    source.addEventListener("open", function () {
      document.documentElement.dataset.live = "open";
      // A reconnect (the stream ends every few minutes) may have missed events.
      if (opened) resync(wanted);
      opened = true;
    });
    source.addEventListener("error", function () {
      document.documentElement.dataset.live = source.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
    });
    source.addEventListener("agents", function (m) {
      var data = parse(m);
      if (data && data.id) setAgent(data.id, !!data.connected);
      tell("agents", data);
    });
    source.addEventListener("executions", function (m) {
      var data = parse(m);
      executionChanged(data);
      tell("executions", data);
    });
    source.addEventListener("rollouts", function (m) {
      tell("rollouts", parse(m));
    });
    source.addEventListener("notifications", function (m) {
      tell("notifications", parse(m));
    });
    source.addEventListener("resync", function () {
      resync(wanted);
    });
  }

  function disconnect() {
    if (source) source.close();
    source = null;
    document.documentElement.dataset.live = "closed";
  }

  function start() {
    var wanted = topics();
    if (!wanted.length || !window.EventSource) return;
    connect(wanted);
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "hidden") disconnect();
      else if (!source) connect(wanted);
    });
    window.addEventListener("pagehide", disconnect);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
