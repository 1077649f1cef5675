/*
 * The server page's charts: load, CPU, memory and disk over the last hour, day, week
 * or month, from GET /api/v1/servers/{id}/metrics, drawn with the vendored Chart.js.
 * The card (#server-metrics) names the URL in data-metrics-url; each range button
 * carries data-range-since (seconds back) and data-range-step. After each drawing
 * the card's data-points says how many points the charts hold (tests read it).
 * Loaded only by metrics/server_charts.hbs.
 */
(function () {
  "use strict";

  var GIB = 1024 * 1024 * 1024;
  var COLORS = { load: "#4c9dff", cpu: "#f0ad4e", mem: "#5cb85c", disk: "#c678dd" };
  var REFRESH_MS = 30000;

  function label(at, step) {
    var d = new Date(at);
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    var time = pad(d.getHours()) + ":" + pad(d.getMinutes());
    if (step < 1800) return time;
    return (d.getMonth() + 1) + "/" + d.getDate() + " " + time;
  }

  function values(points, metric) {
    return points.map(function (p) {
      switch (metric) {
        case "load": return p.load1;
        case "cpu": return p.cpu_percent;
        case "mem": return p.mem_used / GIB;
        case "disk": return p.disk_used / GIB;
      }
      return null;
    });
  }

  function start(card) {
    var url = card.dataset.metricsUrl;
    var status = card.querySelector("[data-metrics-status]");
    var canvases = card.querySelectorAll("canvas[data-metric]");
    var charts = {};
    var current = card.querySelector("[data-range-since].active") ||
      card.querySelector("[data-range-since]");
    var timer = null;

    function draw(points, step) {
      var labels = points.map(function (p) { return label(p.at, step); });
      canvases.forEach(function (canvas) {
        var metric = canvas.dataset.metric;
        var data = values(points, metric);
        var chart = charts[metric];
        if (chart) {
          chart.data.labels = labels;
          chart.data.datasets[0].data = data;
          chart.update("none");
          return;
        }
        charts[metric] = new window.Chart(canvas, {
          type: "line",
          data: {
            labels: labels,
            datasets: [{
              data: data,
              borderColor: COLORS[metric],
              backgroundColor: COLORS[metric] + "33",
              borderWidth: 1.5,
              pointRadius: 0,
              fill: true,
              spanGaps: false,
              tension: 0.2
            }]
          },
          options: {
            responsive: true,
            maintainAspectRatio: false,
            animation: false,
            plugins: { legend: { display: false }, tooltip: { intersect: false, mode: "index" } },
            scales: {
              x: { ticks: { maxTicksLimit: 6, color: "#8b95a5" }, grid: { color: "#2a3342" } },
              y: {
                beginAtZero: true,
                suggestedMax: metric === "cpu" ? 100 : undefined,
                ticks: { color: "#8b95a5" },
                grid: { color: "#2a3342" }
              }
            }
          }
        });
      });
      card.dataset.points = String(points.length);
    }

    function load() {
      if (!current) return;
      var since = Math.floor(Date.now() / 1000) - Number(current.dataset.rangeSince);
      var step = Number(current.dataset.rangeStep);
      fetch(url + "?since=" + since + "&step=" + step, {
        credentials: "same-origin",
        headers: { Accept: "application/json" }
      })
        .then(function (r) {
          return r.json().then(function (body) {
            if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
            return body;
          });
        })
        .then(function (body) {
          var points = body.points || [];
          if (!window.Chart) throw new Error("the chart library did not load");
          draw(points, body.step || step);
          status.textContent = points.length
            ? points.length + " points, one per " + (body.step || step) + " s"
            : "No figures for this range yet: they appear as the agent sends heartbeats.";
        })
        .catch(function (e) {
          status.textContent = "Figures could not be loaded: " + e.message;
        });
    }

    card.querySelectorAll("[data-range-since]").forEach(function (button) {
      button.addEventListener("click", function () {
        if (current) current.classList.remove("active");
        current = button;
        button.classList.add("active");
        load();
      });
    });
    load();
    timer = window.setInterval(function () {
      if (!document.hidden) load();
    }, REFRESH_MS);
    window.addEventListener("pagehide", function () { window.clearInterval(timer); });
  }

  function init() {
    var card = document.getElementById("server-metrics");
    if (card) start(card);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
