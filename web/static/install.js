/*
 * Dynamic Servers: follows an agent install's steps while it runs
 * (web/templates/ssh/install.hbs), redrawing the list from
 * GET /api/v1/agent-installs/{id}. A file of its own, so the pages'
 * Content-Security-Policy can forbid inline scripts.
 */
(function () {
  var card = document.getElementById("agent-install");
  if (!card) return;
  var list = document.getElementById("install-steps");
  var badge = document.getElementById("install-status");
  var badges = {succeeded: "text-bg-success", failed: "text-bg-danger", running: "text-bg-primary"};
  function draw(install) {
    while (list.firstChild) list.removeChild(list.firstChild);
    (install.steps || []).forEach(function (s) {
      var li = document.createElement("li");
      li.className = "list-group-item";
      li.setAttribute("data-install-step", s.name);
      li.setAttribute("data-state", s.status);
      var head = document.createElement("div");
      head.className = "d-flex justify-content-between";
      var name = document.createElement("strong");
      name.textContent = s.name;
      var status = document.createElement("span");
      status.className = "small";
      status.setAttribute("data-step-status", "");
      status.textContent = s.status;
      head.appendChild(name);
      head.appendChild(status);
      li.appendChild(head);
      if (s.message) {
        var msg = document.createElement("div");
        msg.className = "small text-body-secondary text-break";
        msg.setAttribute("data-step-message", "");
        msg.textContent = s.message;
        li.appendChild(msg);
      }
      list.appendChild(li);
    });
    badge.textContent = install.status;
    badge.className = "badge " + (badges[install.status] || "text-bg-secondary");
    card.setAttribute("data-install-running", String(install.running));
  }
  function tick() {
    fetch(card.getAttribute("data-install-url"), {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (install) {
        if (!install) { setTimeout(tick, 5000); return; }
        draw(install);
        if (install.running) setTimeout(tick, 1000);
      })
      .catch(function () { setTimeout(tick, 5000); });
  }
  if (card.getAttribute("data-install-running") === "true") setTimeout(tick, 1000);
})();
