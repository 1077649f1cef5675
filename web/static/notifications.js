/*
 * Dynamic Servers: the notification bell, kept current while a page is open.
 *
 * When the live channel (live.js, topic `notifications`) says the inbox changed, and
 * every few seconds while that channel is not open (every minute while it is), it asks
 * GET /api/v1/notifications/unread ({unread, latest}) and
 *   - sets the unread badge on the bell (.ds-bell, [data-unread-badge]),
 *   - shows a toast (window.dynserv.toast) for each notification newer than the newest
 *     one this tab has already seen, with a link to what it is about.
 * Notification ids are UUIDv7, so comparing them as strings orders them in time; the
 * newest seen id is kept in sessionStorage so a page change never toasts twice and
 * the first page of a session does not toast old news.
 */
(function () {
  "use strict";

  var POLL_MS = 4000;
  var KEY = "dynserv.lastNotification";
  var url = "/api/v1/notifications/unread";

  function bell() {
    return document.querySelector(".ds-bell");
  }

  function setBadge(count) {
    var b = bell();
    if (!b) return;
    b.setAttribute("data-unread", String(count));
    var badge = b.querySelector("[data-unread-badge]");
    if (count <= 0) {
      if (badge) badge.remove();
      return;
    }
    if (!badge) {
      badge = document.createElement("span");
      badge.className = "badge rounded-pill text-bg-danger";
      badge.setAttribute("data-unread-badge", "");
      b.appendChild(badge);
    }
    badge.textContent = String(count);
    var hidden = document.createElement("span");
    hidden.className = "visually-hidden";
    hidden.textContent = " unread";
    badge.appendChild(hidden);
  }

  function lastSeen() {
    try {
      return window.sessionStorage.getItem(KEY);
    } catch (e) {
      return null;
    }
  }

  function remember(id) {
    try {
      window.sessionStorage.setItem(KEY, id);
    } catch (e) {
      /* private mode: toasts may repeat after navigation, nothing worse */
    }
  }

  var memory = lastSeen();

  function announce(list) {
    var newest = memory;
    var fresh = list.filter(function (n) {
      return memory !== null && n.id > memory;
    });
    list.forEach(function (n) {
      if (newest === null || n.id > newest) newest = n.id;
    });
    // Oldest first, so the newest toast ends up on top.
    fresh.reverse().forEach(function (n) {
      if (!window.dynserv || !window.dynserv.toast) return;
      var node = window.dynserv.toast(n.title, n.body, n.level);
      node.setAttribute("data-notification-toast", n.id);
      if (n.link) {
        var open = document.createElement("a");
        open.href = "/notifications/" + encodeURIComponent(n.id);
        open.className = "d-block small px-3 pb-2";
        open.textContent = "Open";
        node.appendChild(open);
      }
    });
    if (newest === null) newest = "0";
    if (newest !== memory) {
      memory = newest;
      remember(newest);
    }
  }

  var timer = null;
  var busy = false;
  var lastPoll = 0;
  var LIVE_BACKUP_MS = 60000;

  function poll() {
    if (busy || document.hidden) return;
    busy = true;
    lastPoll = Date.now();
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("status " + response.status);
        return response.json();
      })
      .then(function (data) {
        setBadge(Number(data.unread) || 0);
        announce(Array.isArray(data.latest) ? data.latest : []);
      })
      .catch(function () {
        /* offline or signed out: try again on the next tick */
      })
      .then(function () {
        busy = false;
      });
  }

  function start() {
    if (!bell()) return;
    poll();
    timer = setInterval(function () {
      // With the live channel open, its events bring changes: polling only backs it up.
      var live = document.documentElement.dataset.live === "open";
      if (!live || Date.now() - lastPoll >= LIVE_BACKUP_MS) poll();
    }, POLL_MS);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) poll();
    });
    document.addEventListener("dynserv:live", function (e) {
      var topic = e.detail && e.detail.topic;
      if (topic === "notifications" || topic === "resync") poll();
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }

  window.dynserv = window.dynserv || {};
  window.dynserv.pollNotifications = poll;
  window.dynserv.stopNotifications = function () {
    clearInterval(timer);
  };
})();
