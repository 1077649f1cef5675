/*
 * Dynamic Servers: follows a request's provisioning steps while provisioning runs
 * (web/templates/hetzner/provision_steps.hbs), redrawing each step's state from
 * GET /api/v1/requests/{id}/provisioning. A file of its own rather than an inline
 * script, so the pages' Content-Security-Policy can forbid inline scripts.
 */
// Follow the steps while provisioning runs: redraw each step's state.
(function () {
  var card = document.getElementById("provisioning");
  if (!card) return;
  var icons = {done: "fa-circle-check text-success", failed: "fa-circle-xmark text-danger", active: "fa-spinner fa-spin text-info", pending: "fa-circle text-body-tertiary"};
  function tick() {
    fetch(card.getAttribute("data-provision-url"), {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) {
        if (!p) return;
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
