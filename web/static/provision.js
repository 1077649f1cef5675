/*
 * Dynamic Servers: follows a request's provisioning steps while provisioning runs
 * (web/templates/hetzner/provision_steps.hbs), redrawing each step's state from
 * GET /api/v1/requests/{id}/provisioning. Before provisioning starts the card is
 * hidden ([data-provision-waiting]) and shown as soon as the answer is no longer null,
 * so the requester's page follows an approval too. A file of its own rather than an
 * inline script, so the pages' Content-Security-Policy can forbid inline scripts.
 */
(function () {
  var card = document.getElementById("provisioning");
  if (!card) return;
  var icons = {done: "fa-circle-check text-success", failed: "fa-circle-xmark text-danger", active: "fa-spinner fa-spin text-info", pending: "fa-circle text-body-tertiary"};
  var waiting = card.hasAttribute("data-provision-waiting");
  // While waiting: only as long as the request may still be provisioned.
  function mayStart() {
    var root = document.querySelector("[data-request-live]");
    var status = root ? root.getAttribute("data-status") : "pending";
    return status === "pending" || status === "approved" || status === "provisioning";
  }
  function tick() {
    fetch(card.getAttribute("data-provision-url"), {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) {
        if (!p) {
          if (waiting && mayStart()) setTimeout(tick, 3000);
          return;
        }
        if (waiting) {
          waiting = false;
          card.removeAttribute("data-provision-waiting");
          card.hidden = false;
        }
        var server = card.querySelector("[data-provision-server]");
        if (server) server.textContent = p.server_name || "";
        (p.steps || []).forEach(function (s) {
          var li = card.querySelector('[data-provision-step="' + s.name + '"]');
          if (!li || li.getAttribute("data-state") === s.state) return;
          li.setAttribute("data-state", s.state);
          li.querySelector("i").className = "fa-solid " + icons[s.state];
          li.querySelector("[data-state-label]").textContent = s.state;
        });
        var err = card.querySelector("[data-provision-error]");
        err.textContent = p.error || "";
        err.classList.toggle("d-none", !p.error);
        card.setAttribute("data-provision-running", String(p.running));
        if (p.running) setTimeout(tick, 1500);
      })
      .catch(function () { setTimeout(tick, 5000); });
  }
  setTimeout(tick, 1500);
})();
