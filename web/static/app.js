/*
 * Dynamic Servers: the page behaviours, in plain JavaScript (no build step, no external
 * requests). Loaded with `defer` after Bootstrap's bundle; every feature is switched on
 * by markup, so pages need no inline script:
 *
 *   form.needs-validation               Bootstrap client-side validation (+ novalidate)
 *   input[data-live-search="#table"]    filters the table's body rows as you type; with
 *     data-live-search-url="/path"      the server searches instead (every record, not
 *                                       only the page), debounced
 *   #flash[data-level][data-message]    a server-rendered flash message, shown as a toast
 *   form[data-confirm="message"]        asks before submitting; data-confirm-type="WORD"
 *                                       makes the user type WORD first
 *   .log-viewer[data-stream-url]        live execution log over a WebSocket
 *   time[data-relative][datetime]       "3 minutes ago", refreshed every 30 s
 *   [data-copy="#selector"|"text"]      copies text to the clipboard
 *   select[data-autosubmit]             submits its form when the choice changes
 *   [data-reload-after="ms"]            reloads the page after that many milliseconds
 *   [data-width="42"]                   sets the element's width to 42 % (progress bars)
 *
 * The pages' Content-Security-Policy allows scripts and styles from this origin only:
 * no inline script, no event-handler attribute, no style attribute in markup. Styles
 * computed here are set through the DOM (element.style), which the policy allows.
 *
 * Public API on window.dynserv: toast(title, body, level), escapeHtml(text),
 * ansiToHtml(text, state), renderAnsi(node, text, state), LogViewer, liveSearch(input), serverSearch(input),
 * refreshRelativeTimes(), setExecutionStatus(status, exitCode, scope), setStatusBadge(node, status),
 * FINAL_STATUSES.
 */
(function () {
  "use strict";

  var dynserv = (window.dynserv = window.dynserv || {});

  // ---- helpers ------------------------------------------------------------------

  var HTML_ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  /** Escapes text for use inside HTML content or a quoted attribute. */
  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return HTML_ESCAPES[c];
    });
  }

  function onReady(fn) {
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", fn);
    } else {
      fn();
    }
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function hasBootstrap(name) {
    return typeof window.bootstrap === "object" && window.bootstrap && window.bootstrap[name];
  }

  // ---- toasts -------------------------------------------------------------------

  var LEVELS = {
    success: { icon: "fa-circle-check", color: "text-success" },
    info: { icon: "fa-circle-info", color: "text-info" },
    warning: { icon: "fa-triangle-exclamation", color: "text-warning" },
    danger: { icon: "fa-circle-exclamation", color: "text-danger" }
  };

  function normalizeLevel(level) {
    level = String(level || "info").toLowerCase();
    if (level === "error") return "danger";
    if (level === "warn") return "warning";
    if (level === "ok") return "success";
    return LEVELS[level] ? level : "info";
  }

  function toastContainer() {
    var container = document.getElementById("ds-toasts");
    if (!container) {
      container = el("div", "toast-container ds-toasts position-fixed bottom-0 end-0 p-3");
      container.id = "ds-toasts";
      container.setAttribute("aria-live", "polite");
      container.setAttribute("aria-atomic", "false");
      document.body.appendChild(container);
    }
    return container;
  }

  /**
   * Shows a toast. `level` is success, info, warning or danger (error/warn accepted).
   * Title and body are text, never HTML. Errors stay until dismissed.
   */
  function toast(title, body, level) {
    level = normalizeLevel(level);
    var look = LEVELS[level];
    var node = el("div", "toast");
    node.setAttribute("role", level === "danger" ? "alert" : "status");
    node.setAttribute("aria-live", level === "danger" ? "assertive" : "polite");
    node.setAttribute("aria-atomic", "true");
    node.dataset.level = level;

    var header = el("div", "toast-header");
    var icon = el("i", "fa-solid " + look.icon + " " + look.color + " me-2");
    icon.setAttribute("aria-hidden", "true");
    header.appendChild(icon);
    header.appendChild(el("strong", "me-auto", title || ""));
    var close = el("button", "btn-close");
    close.type = "button";
    close.setAttribute("data-bs-dismiss", "toast");
    close.setAttribute("aria-label", "Close");
    header.appendChild(close);
    node.appendChild(header);
    if (body) node.appendChild(el("div", "toast-body", body));

    toastContainer().appendChild(node);
    var autohide = level !== "danger";
    if (hasBootstrap("Toast")) {
      var instance = new window.bootstrap.Toast(node, { autohide: autohide, delay: 6000 });
      node.addEventListener("hidden.bs.toast", function () {
        node.remove();
      });
      instance.show();
    } else {
      node.classList.add("show");
      close.addEventListener("click", function () {
        node.remove();
      });
      if (autohide) {
        setTimeout(function () {
          node.remove();
        }, 6000);
      }
    }
    return node;
  }

  function showFlash() {
    var flash = document.getElementById("flash");
    if (!flash || !flash.dataset.message) return;
    var level = normalizeLevel(flash.dataset.level);
    var titles = { success: "Done", info: "Note", warning: "Warning", danger: "Error" };
    toast(flash.dataset.title || titles[level], flash.dataset.message, level);
  }

  // ---- form validation ------------------------------------------------------------

  /** Fills an empty .invalid-feedback beside a field with the browser's message. */
  function feedbackFor(field) {
    var group = field.closest(".input-group, .form-floating, .mb-3, .col, [class*='col-'], .form-check") || field.parentElement;
    return group ? group.querySelector(".invalid-feedback") : null;
  }

  function syncFeedback(field) {
    var feedback = feedbackFor(field);
    if (!feedback) return;
    if (!("auto" in feedback.dataset) && feedback.textContent.trim() !== "") return;
    feedback.dataset.auto = "";
    feedback.textContent = field.validationMessage;
  }

  function setupValidation(form) {
    form.setAttribute("novalidate", "");
    form.addEventListener(
      "submit",
      function (event) {
        var fields = form.querySelectorAll("input, select, textarea");
        Array.prototype.forEach.call(fields, syncFeedback);
        if (!form.checkValidity()) {
          event.preventDefault();
          event.stopImmediatePropagation();
          form.classList.add("was-validated");
          var firstInvalid = form.querySelector(":invalid");
          if (firstInvalid && firstInvalid.focus) firstInvalid.focus();
          return;
        }
        form.classList.add("was-validated");
      },
      true
    );
    form.addEventListener("input", function (event) {
      var field = event.target;
      // A server-side error beside a field goes away once the user edits that field.
      if (field.classList && field.classList.contains("is-invalid")) {
        field.classList.remove("is-invalid");
      }
      if (form.classList.contains("was-validated")) syncFeedback(field);
    });
  }

  // ---- live search ----------------------------------------------------------------

  function searchableText(row) {
    return (row.dataset.search || row.textContent || "").toLowerCase();
  }

  /** Filters the rows of the table named by input.dataset.liveSearch. */
  function liveSearch(input) {
    var table = document.querySelector(input.dataset.liveSearch);
    if (!table) return;
    var body = table.tBodies[0] || table;
    var terms = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    var rows = Array.prototype.filter.call(body.rows || body.querySelectorAll("tr"), function (row) {
      return !row.classList.contains("live-search-empty");
    });
    var shown = 0;
    rows.forEach(function (row) {
      var text = searchableText(row);
      var match = terms.every(function (term) {
        return text.indexOf(term) !== -1;
      });
      row.classList.toggle("live-search-hidden", !match);
      if (match) shown++;
    });

    var empty = body.querySelector("tr.live-search-empty");
    if (shown === 0 && rows.length > 0) {
      if (!empty) {
        empty = el("tr", "live-search-empty");
        var cell = el("td");
        var columns = table.tHead && table.tHead.rows[0] ? table.tHead.rows[0].cells.length : rows[0].cells.length;
        cell.colSpan = Math.max(columns, 1);
        empty.appendChild(cell);
        body.appendChild(empty);
      }
      empty.cells[0].textContent = "No match for \u201c" + input.value.trim() + "\u201d";
    } else if (empty) {
      empty.remove();
    }

    var counters = document.querySelectorAll('[data-live-search-count="' + input.dataset.liveSearch + '"]');
    Array.prototype.forEach.call(counters, function (counter) {
      counter.textContent = terms.length ? shown + " of " + rows.length : String(rows.length);
    });
  }

  /** How long typing pauses before a server-side search asks the server. */
  var SEARCH_DEBOUNCE_MS = 250;

  /**
   * Server-side live search (input[data-live-search-url]): as you type, the input's
   * form (its other filters included) is sent to that URL in the background, and the
   * table's body and its pager ([data-live-search-pager="#table"]) are replaced with
   * the answer's, so the search covers every record, not only the rows on the page.
   * An answer that arrives after a newer question was asked is dropped.
   */
  function serverSearch(input) {
    var state = input._dsSearch || (input._dsSearch = { seq: 0, controller: null });
    var params = new URLSearchParams();
    if (input.form) {
      new FormData(input.form).forEach(function (value, key) {
        if (typeof value === "string" && value !== "" && key !== "cursor") params.append(key, value);
      });
    } else if (input.value) {
      params.set(input.name || "q", input.value);
    }
    var query = params.toString();
    var url = input.dataset.liveSearchUrl + (query ? "?" + query : "");
    if (state.controller) state.controller.abort();
    state.controller = typeof AbortController === "function" ? new AbortController() : null;
    var mine = ++state.seq;
    var options = { credentials: "same-origin", headers: { Accept: "text/html" } };
    if (state.controller) options.signal = state.controller.signal;
    return fetch(url, options)
      .then(function (response) {
        if (!response.ok) throw new Error("search answered " + response.status);
        return response.text();
      })
      .then(function (html) {
        if (mine !== state.seq) return;
        var selector = input.dataset.liveSearch;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.querySelector(selector);
        var table = document.querySelector(selector);
        if (!fresh || !table || !fresh.tBodies[0] || !table.tBodies[0]) return;
        table.replaceChild(document.importNode(fresh.tBodies[0], true), table.tBodies[0]);
        var pagerSelector = '[data-live-search-pager="' + selector + '"]';
        var pager = document.querySelector(pagerSelector);
        var freshPager = doc.querySelector(pagerSelector);
        if (pager && freshPager) {
          while (pager.firstChild) pager.removeChild(pager.firstChild);
          Array.prototype.forEach.call(freshPager.childNodes, function (node) {
            pager.appendChild(document.importNode(node, true));
          });
        }
        if (window.history && window.history.replaceState) window.history.replaceState(null, "", url);
        refreshRelativeTimes();
      })
      .catch(function () {
        // Superseded by a newer search, or the server did not answer: the rows shown
        // stay, and submitting the form still works.
      });
  }

  function setupServerSearch(input) {
    var timer = null;
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        serverSearch(input);
      }, SEARCH_DEBOUNCE_MS);
    });
    input.addEventListener("keydown", function (event) {
      if (event.key === "Escape") {
        input.value = "";
        clearTimeout(timer);
        serverSearch(input);
      }
    });
  }

  function setupLiveSearch(input) {
    input.setAttribute("autocomplete", "off");
    if (input.dataset.liveSearchUrl) {
      setupServerSearch(input);
      return;
    }
    input.addEventListener("input", function () {
      liveSearch(input);
    });
    input.addEventListener("keydown", function (event) {
      if (event.key === "Escape") {
        input.value = "";
        liveSearch(input);
      }
    });
    if (input.value) liveSearch(input);
  }

  // "/" focuses the page's first live search, as on many dashboards.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) return;
    var search = document.querySelector("input[data-live-search]");
    if (search) {
      event.preventDefault();
      search.focus();
      search.select();
    }
  });

  // ---- confirm dialogs ------------------------------------------------------------

  function confirmDialog(message, requiredWord, danger) {
    return new Promise(function (resolve) {
      if (!hasBootstrap("Modal")) {
        if (requiredWord) {
          var typed = window.prompt(message + "\n\nType " + requiredWord + " to confirm.");
          resolve(typed === requiredWord);
        } else {
          resolve(window.confirm(message));
        }
        return;
      }
      var modal = el("div", "modal fade");
      modal.tabIndex = -1;
      modal.setAttribute("aria-modal", "true");
      modal.setAttribute("role", "dialog");
      var dialog = el("div", "modal-dialog modal-dialog-centered");
      var content = el("div", "modal-content");
      var header = el("div", "modal-header");
      var title = el("h5", "modal-title");
      var icon = el("i", "fa-solid fa-triangle-exclamation me-2 " + (danger ? "text-danger" : "text-warning"));
      icon.setAttribute("aria-hidden", "true");
      title.appendChild(icon);
      title.appendChild(document.createTextNode("Please confirm"));
      header.appendChild(title);
      var closeX = el("button", "btn-close");
      closeX.type = "button";
      closeX.setAttribute("data-bs-dismiss", "modal");
      closeX.setAttribute("aria-label", "Cancel");
      header.appendChild(closeX);
      var body = el("div", "modal-body");
      body.appendChild(el("p", "mb-0", message));
      var input = null;
      if (requiredWord) {
        var label = el("label", "form-label mt-3 small");
        label.appendChild(document.createTextNode("Type "));
        label.appendChild(el("code", null, requiredWord));
        label.appendChild(document.createTextNode(" to confirm"));
        input = el("input", "form-control font-monospace");
        input.type = "text";
        input.autocomplete = "off";
        input.spellcheck = false;
        input.setAttribute("data-confirm-input", "");
        label.htmlFor = input.id = "ds-confirm-" + Date.now();
        body.appendChild(label);
        body.appendChild(input);
      }
      var footer = el("div", "modal-footer");
      var cancel = el("button", "btn btn-outline-secondary", "Cancel");
      cancel.type = "button";
      cancel.setAttribute("data-bs-dismiss", "modal");
      var ok = el("button", "btn " + (danger ? "btn-danger" : "btn-primary"), "Confirm");
      ok.type = "button";
      ok.setAttribute("data-confirm-ok", "");
      footer.appendChild(cancel);
      footer.appendChild(ok);
      content.appendChild(header);
      content.appendChild(body);
      content.appendChild(footer);
      dialog.appendChild(content);
      modal.appendChild(dialog);
      document.body.appendChild(modal);

      var confirmed = false;
      if (input) {
        ok.disabled = true;
        input.addEventListener("input", function () {
          ok.disabled = input.value !== requiredWord;
        });
        input.addEventListener("keydown", function (event) {
          if (event.key === "Enter" && !ok.disabled) {
            event.preventDefault();
            ok.click();
          }
        });
      }
      var instance = new window.bootstrap.Modal(modal);
      ok.addEventListener("click", function () {
        confirmed = true;
        instance.hide();
      });
      modal.addEventListener("shown.bs.modal", function () {
        // Marks the end of the opening transition: Bootstrap ignores a hide() before it.
        modal.setAttribute("data-confirm-ready", "");
        (input || ok).focus();
      });
      modal.addEventListener("hidden.bs.modal", function () {
        instance.dispose();
        modal.remove();
        resolve(confirmed);
      });
      instance.show();
    });
  }

  function setupConfirm(form) {
    form.addEventListener("submit", function (event) {
      if (form.dataset.confirmed === "yes") {
        delete form.dataset.confirmed;
        return;
      }
      event.preventDefault();
      var submitter = event.submitter || null;
      var danger = /danger/.test((submitter && submitter.className) || "") || !!form.dataset.confirmType;
      confirmDialog(form.dataset.confirm, form.dataset.confirmType || "", danger).then(function (yes) {
        if (!yes) return;
        form.dataset.confirmed = "yes";
        if (form.requestSubmit) {
          form.requestSubmit(submitter && submitter.form === form ? submitter : undefined);
        } else {
          form.submit();
        }
      });
    });
  }

  // ---- ANSI SGR -> HTML -----------------------------------------------------------

  function newAnsiState() {
    return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false };
  }

  function copyAnsiState(state) {
    return {
      fg: state.fg,
      bg: state.bg,
      bold: state.bold,
      dim: state.dim,
      italic: state.italic,
      underline: state.underline
    };
  }

  /** A 256-color palette index as a class (0-15) or an rgb() value (16-255). */
  function color256(index) {
    if (index < 16) return { cls: index };
    if (index < 232) {
      var i = index - 16;
      var steps = [0, 95, 135, 175, 215, 255];
      return { rgb: [steps[Math.floor(i / 36)], steps[Math.floor(i / 6) % 6], steps[i % 6]] };
    }
    var gray = 8 + (index - 232) * 10;
    return { rgb: [gray, gray, gray] };
  }

  function applySgr(state, params) {
    var codes = params === "" ? [0] : params.split(/[;:]/).map(function (p) {
      return p === "" ? 0 : parseInt(p, 10);
    });
    for (var i = 0; i < codes.length; i++) {
      var code = codes[i];
      if (isNaN(code)) continue;
      if (code === 0) {
        var fresh = newAnsiState();
        for (var key in fresh) state[key] = fresh[key];
      } else if (code === 1) state.bold = true;
      else if (code === 2) state.dim = true;
      else if (code === 3) state.italic = true;
      else if (code === 4) state.underline = true;
      else if (code === 22) state.bold = state.dim = false;
      else if (code === 23) state.italic = false;
      else if (code === 24) state.underline = false;
      else if (code >= 30 && code <= 37) state.fg = { cls: code - 30 };
      else if (code >= 90 && code <= 97) state.fg = { cls: code - 90 + 8 };
      else if (code === 39) state.fg = null;
      else if (code >= 40 && code <= 47) state.bg = { cls: code - 40 };
      else if (code >= 100 && code <= 107) state.bg = { cls: code - 100 + 8 };
      else if (code === 49) state.bg = null;
      else if (code === 38 || code === 48) {
        var target = code === 38 ? "fg" : "bg";
        if (codes[i + 1] === 5 && i + 2 < codes.length) {
          var idx = codes[i + 2];
          if (idx >= 0 && idx <= 255) state[target] = color256(idx);
          i += 2;
        } else if (codes[i + 1] === 2 && i + 4 < codes.length) {
          var rgb = [codes[i + 2], codes[i + 3], codes[i + 4]].map(function (v) {
            return Math.max(0, Math.min(255, v | 0));
          });
          state[target] = { rgb: rgb };
          i += 4;
        }
      }
    }
  }

  /**
   * A span carrying the SGR state's classes, and its 256-color or true-color values as
   * DOM styles; null when the state is plain. Only class names and numbers built here
   * reach the span: nothing from the log text.
   */
  function ansiSpan(state) {
    var classes = [];
    if (state.bold) classes.push("ansi-bold");
    if (state.dim) classes.push("ansi-dim");
    if (state.italic) classes.push("ansi-italic");
    if (state.underline) classes.push("ansi-underline");
    if (state.fg && !state.fg.rgb) {
      classes.push("ansi-fg-" + (state.bold && state.fg.cls < 8 ? state.fg.cls + 8 : state.fg.cls));
    }
    if (state.bg && !state.bg.rgb) classes.push("ansi-bg-" + state.bg.cls);
    var fgRgb = state.fg && state.fg.rgb;
    var bgRgb = state.bg && state.bg.rgb;
    if (!classes.length && !fgRgb && !bgRgb) return null;
    var span = document.createElement("span");
    if (classes.length) span.className = classes.join(" ");
    if (fgRgb) span.style.color = "rgb(" + fgRgb.join(",") + ")";
    if (bgRgb) span.style.backgroundColor = "rgb(" + bgRgb.join(",") + ")";
    return span;
  }

  // CSI sequences (ESC [ params final), OSC sequences (ESC ] ... BEL/ST), other ESC x.
  var ESCAPE_RE = /\u001b\[([0-9;:?]*)([@-~])|\u001b\][^\u0007\u001b]*(?:\u0007|\u001b\\)?|\u001b[@-Z\\-_]?/g;

  /**
   * Appends text with ANSI escape sequences to `node` as DOM nodes: SGR colors and
   * styles become spans, every other sequence is dropped, the text stays text.
   * `state` (optional) carries the SGR state across calls and is updated.
   */
  function renderAnsi(node, text, state) {
    state = state || newAnsiState();
    var target = ansiSpan(state);
    var flushText = function (piece) {
      if (!piece) return;
      (target || node).appendChild(document.createTextNode(piece));
    };
    var close = function () {
      if (target && target.childNodes.length) node.appendChild(target);
    };
    var last = 0;
    var match;
    ESCAPE_RE.lastIndex = 0;
    while ((match = ESCAPE_RE.exec(text)) !== null) {
      flushText(text.slice(last, match.index));
      last = ESCAPE_RE.lastIndex;
      if (match[2] === "m") {
        close();
        applySgr(state, match[1] || "");
        target = ansiSpan(state);
      }
    }
    flushText(text.slice(last));
    close();
    return node;
  }

  /** Like renderAnsi, as an HTML string (for callers that need markup). */
  function ansiToHtml(text, state) {
    return renderAnsi(document.createElement("div"), text, state).innerHTML;
  }

  // ---- log viewer -----------------------------------------------------------------

  var FINAL_STATUSES = ["succeeded", "failed", "cancelled", "timed_out"];

  var STATUS_CLASSES = {
    queued: "text-bg-secondary",
    running: "text-bg-primary",
    succeeded: "text-bg-success",
    failed: "text-bg-danger",
    cancelled: "text-bg-secondary",
    timed_out: "text-bg-warning"
  };

  /** Gives a status badge the colour of `status` (its text is the caller's). */
  function setStatusBadge(node, status) {
    Object.keys(STATUS_CLASSES).forEach(function (key) {
      node.classList.remove(STATUS_CLASSES[key]);
    });
    node.classList.add(STATUS_CLASSES[status] || "text-bg-secondary");
  }

  function setExecutionStatus(status, exitCode, scope) {
    scope = scope || document;
    Array.prototype.forEach.call(scope.querySelectorAll("[data-exec-status]"), function (node) {
      node.textContent = String(status).replace(/_/g, " ");
      node.dataset.execStatus = status;
      if (node.classList.contains("badge")) setStatusBadge(node, status);
    });
    if (exitCode !== undefined) {
      Array.prototype.forEach.call(scope.querySelectorAll("[data-exec-exit]"), function (node) {
        node.textContent = exitCode === null ? "\u2014" : String(exitCode);
        node.dataset.execExit = exitCode === null ? "" : String(exitCode);
      });
    }
  }

  function streamUrl(path, fromSeq) {
    var url = new URL(path, window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    if (fromSeq !== null && fromSeq !== undefined) url.searchParams.set("from_seq", String(fromSeq));
    return url.toString();
  }

  /**
   * A live log bound to a .log-viewer element. Frames {seq, stream, data} are appended
   * in seq order (replays after a reconnect are deduplicated by seq); text is split
   * into lines per stream, keeping a partial last line open until its newline comes.
   */
  function LogViewer(root) {
    this.root = root;
    this.streamPath = root.dataset.streamUrl;
    this.logUrl = root.dataset.logUrl || "";
    this.lastSeq = null;
    this.lineCount = 0;
    this.ended = false;
    this.socket = null;
    this.retries = 0;
    this.follow = root.dataset.follow !== "false";
    this.open = { stdout: null, stderr: null };
    // A past execution reopened later replays to its end; only an end seen live earns
    // a toast.
    var statusNode = document.querySelector("[data-exec-status]");
    var initialStatus = statusNode ? statusNode.dataset.execStatus || statusNode.textContent.trim() : "";
    this.finishedBefore = FINAL_STATUSES.indexOf(initialStatus) !== -1;
    this.pending = [];
    this.flushScheduled = false;
    this.build();
    this.connect();
  }

  LogViewer.prototype.build = function () {
    var root = this.root;
    var self = this;
    root.textContent = "";
    root.setAttribute("role", "region");
    root.setAttribute("aria-label", root.getAttribute("aria-label") || "Execution output");

    var toolbar = el("div", "log-toolbar");
    this.stateNode = el("span", "log-state waiting", "connecting\u2026");
    this.stateNode.setAttribute("data-log-state", "");
    toolbar.appendChild(this.stateNode);
    this.countNode = el("span", "log-count text-body-secondary", "0 lines");
    this.countNode.setAttribute("data-log-count", "");
    toolbar.appendChild(this.countNode);

    var spacer = el("span", "ms-auto");
    toolbar.appendChild(spacer);

    var wrapId = "log-wrap-" + Math.random().toString(36).slice(2);
    var wrap = el("div", "form-check form-switch");
    this.wrapInput = el("input", "form-check-input");
    this.wrapInput.type = "checkbox";
    this.wrapInput.id = wrapId;
    this.wrapInput.checked = true;
    this.wrapInput.addEventListener("change", function () {
      root.classList.toggle("log-nowrap", !self.wrapInput.checked);
    });
    var wrapLabel = el("label", "form-check-label", "Wrap");
    wrapLabel.htmlFor = wrapId;
    wrap.appendChild(this.wrapInput);
    wrap.appendChild(wrapLabel);
    toolbar.appendChild(wrap);

    var followId = "log-follow-" + Math.random().toString(36).slice(2);
    var follow = el("div", "form-check form-switch");
    this.followInput = el("input", "form-check-input");
    this.followInput.type = "checkbox";
    this.followInput.id = followId;
    this.followInput.checked = this.follow;
    this.followInput.setAttribute("data-log-follow", "");
    this.followInput.addEventListener("change", function () {
      self.follow = self.followInput.checked;
      if (self.follow) self.scrollToEnd();
    });
    var followLabel = el("label", "form-check-label", "Follow");
    followLabel.htmlFor = followId;
    follow.appendChild(this.followInput);
    follow.appendChild(followLabel);
    toolbar.appendChild(follow);

    if (this.logUrl) {
      var download = el("a", "btn btn-sm btn-outline-secondary");
      download.href = this.logUrl;
      download.setAttribute("download", "");
      download.title = "Download the stored log (JSON lines)";
      var icon = el("i", "fa-solid fa-download");
      icon.setAttribute("aria-hidden", "true");
      download.appendChild(icon);
      download.appendChild(el("span", "visually-hidden", "Download log"));
      toolbar.appendChild(download);
    }

    this.body = el("div", "log-body");
    this.body.setAttribute("data-log-body", "");
    this.body.tabIndex = 0;
    this.emptyNode = el("div", "log-empty", "Waiting for output\u2026");
    this.body.appendChild(this.emptyNode);
    // Scrolling up pauses following; scrolling back to the end resumes it. A scroll
    // to the end made by the viewer itself leaves following on.
    this.body.addEventListener("scroll", function () {
      var atEnd = self.body.scrollHeight - self.body.scrollTop - self.body.clientHeight < 24;
      if (atEnd !== self.follow) {
        self.follow = atEnd;
        self.followInput.checked = atEnd;
      }
    });

    root.appendChild(toolbar);
    root.appendChild(this.body);
  };

  LogViewer.prototype.setState = function (text, kind) {
    this.stateNode.textContent = text;
    this.stateNode.className = "log-state " + kind;
    this.root.dataset.state = kind;
  };

  LogViewer.prototype.connect = function () {
    var self = this;
    if (this.ended) return;
    var fromSeq = this.lastSeq === null ? null : this.lastSeq + 1;
    var socket;
    try {
      socket = new WebSocket(streamUrl(this.streamPath, fromSeq));
    } catch (error) {
      this.meta("cannot open the live stream: " + error.message);
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.binaryType = "arraybuffer";
    socket.onopen = function () {
      self.retries = 0;
      self.setState("live", "live");
    };
    socket.onmessage = function (event) {
      var frame;
      try {
        var text = typeof event.data === "string" ? event.data : new TextDecoder().decode(event.data);
        frame = JSON.parse(text);
      } catch (error) {
        return;
      }
      self.handle(frame);
    };
    socket.onclose = function () {
      if (self.socket !== socket) return;
      self.socket = null;
      if (!self.ended) self.scheduleReconnect();
    };
    socket.onerror = function () {
      // onclose follows and schedules the reconnect.
    };
  };

  LogViewer.prototype.scheduleReconnect = function () {
    var self = this;
    this.retries += 1;
    var delay = Math.min(15000, 500 * Math.pow(2, Math.min(this.retries - 1, 5)));
    delay = delay / 2 + Math.random() * (delay / 2);
    this.setState("reconnecting in " + Math.ceil(delay / 1000) + " s", "waiting");
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(function () {
      self.setState("connecting\u2026", "waiting");
      self.connect();
    }, delay);
  };

  LogViewer.prototype.handle = function (frame) {
    if (!frame || typeof frame !== "object") return;
    if (frame.end) {
      this.finish(frame.end);
      return;
    }
    if (frame.error) {
      this.meta(String(frame.error));
      return;
    }
    if (typeof frame.seq !== "number") return;
    if (this.lastSeq !== null && frame.seq <= this.lastSeq) return;
    this.lastSeq = frame.seq;
    var data = frame.data;
    if (Array.isArray(data)) {
      data = new TextDecoder().decode(new Uint8Array(data));
    }
    this.pending.push({ stream: frame.stream === "stderr" ? "stderr" : "stdout", data: String(data || "") });
    this.scheduleFlush();
    var status = document.querySelector("[data-exec-status]");
    if (status && (status.dataset.execStatus === "queued" || status.textContent.trim() === "queued")) {
      setExecutionStatus("running");
    }
  };

  LogViewer.prototype.scheduleFlush = function () {
    var self = this;
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    var run = function () {
      self.flushScheduled = false;
      self.flush();
    };
    if (document.hidden || !window.requestAnimationFrame) setTimeout(run, 50);
    else window.requestAnimationFrame(run);
  };

  LogViewer.prototype.newLine = function (stream) {
    var line = el("div", "log-line log-" + stream);
    line._raw = "";
    line._state = copyAnsiState(this.ansi[stream]);
    this.fragment.appendChild(line);
    this.lineCount += 1;
    return line;
  };

  LogViewer.prototype.renderLine = function (line, stream) {
    var raw = line._raw.replace(/\r+$/, "");
    var state = copyAnsiState(line._state);
    // A carriage return overwrites the line in a terminal (progress bars): show the
    // text after the last one, with the colors set before it still in force.
    var cr = raw.lastIndexOf("\r");
    if (cr !== -1) {
      // Only the state matters here: render the overwritten part into nothing.
      renderAnsi(document.createDocumentFragment(), raw.slice(0, cr), state);
      raw = raw.slice(cr + 1);
    }
    line.textContent = "";
    renderAnsi(line, raw, state);
    this.ansi[stream] = state;
  };

  LogViewer.prototype.flush = function () {
    if (!this.pending.length) return;
    if (!this.ansi) this.ansi = { stdout: newAnsiState(), stderr: newAnsiState() };
    if (this.emptyNode) {
      this.emptyNode.remove();
      this.emptyNode = null;
    }
    this.fragment = document.createDocumentFragment();
    var chunks = this.pending;
    this.pending = [];
    for (var c = 0; c < chunks.length; c++) {
      var stream = chunks[c].stream;
      var pieces = chunks[c].data.split("\n");
      for (var p = 0; p < pieces.length; p++) {
        var isLast = p === pieces.length - 1;
        if (isLast && pieces[p] === "") {
          // The chunk ended with a newline: the stream's line is complete.
          this.open[stream] = null;
          break;
        }
        var line = this.open[stream];
        if (!line) line = this.newLine(stream);
        line._raw += pieces[p];
        this.renderLine(line, stream);
        this.open[stream] = isLast ? line : null;
      }
    }
    this.body.appendChild(this.fragment);
    this.fragment = null;
    this.countNode.textContent = this.lineCount + (this.lineCount === 1 ? " line" : " lines");
    this.root.dataset.lines = String(this.lineCount);
    if (this.follow) this.scrollToEnd();
  };

  LogViewer.prototype.meta = function (text) {
    if (this.emptyNode) {
      this.emptyNode.remove();
      this.emptyNode = null;
    }
    this.body.appendChild(el("div", "log-line log-meta", text));
    if (this.follow) this.scrollToEnd();
  };

  LogViewer.prototype.scrollToEnd = function () {
    this.body.scrollTop = this.body.scrollHeight;
  };

  LogViewer.prototype.finish = function (end) {
    if (this.ended) return;
    this.flush();
    this.ended = true;
    clearTimeout(this.reconnectTimer);
    if (this.socket) {
      var socket = this.socket;
      this.socket = null;
      socket.close();
    }
    var status = end.status || "finished";
    var exitCode = end.exit_code === undefined ? null : end.exit_code;
    this.setState(status.replace(/_/g, " "), "ended");
    this.root.dataset.ended = status;
    if (this.emptyNode) this.emptyNode.textContent = "No output.";
    this.meta(
      "\u2014 " + status.replace(/_/g, " ") + (exitCode === null ? "" : ", exit code " + exitCode) + " \u2014"
    );
    setExecutionStatus(status, exitCode);
    if (!this.finishedBefore) {
      var level = status === "succeeded" ? "success" : status === "cancelled" ? "info" : status === "timed_out" ? "warning" : "danger";
      toast(
        "Execution " + status.replace(/_/g, " "),
        exitCode === null ? "" : "Exit code " + exitCode,
        level
      );
    }
    this.root.dispatchEvent(new CustomEvent("dynserv:execution-end", { bubbles: true, detail: end }));
  };

  LogViewer.prototype.close = function () {
    this.ended = true;
    clearTimeout(this.reconnectTimer);
    if (this.socket) this.socket.close();
  };

  // ---- relative times -------------------------------------------------------------

  var RELATIVE_UNITS = [
    ["year", 365 * 24 * 3600],
    ["month", 30 * 24 * 3600],
    ["week", 7 * 24 * 3600],
    ["day", 24 * 3600],
    ["hour", 3600],
    ["minute", 60],
    ["second", 1]
  ];

  function relativeText(date, now) {
    var seconds = (date.getTime() - now) / 1000;
    if (Math.abs(seconds) < 45) return seconds < 0 || Math.abs(seconds) < 1 ? "just now" : "in a few seconds";
    var formatter = window.Intl && Intl.RelativeTimeFormat ? new Intl.RelativeTimeFormat(undefined, { numeric: "auto" }) : null;
    for (var i = 0; i < RELATIVE_UNITS.length; i++) {
      var unit = RELATIVE_UNITS[i];
      if (Math.abs(seconds) >= unit[1] || unit[0] === "second") {
        var value = Math.round(seconds / unit[1]);
        if (formatter) return formatter.format(value, unit[0]);
        var count = Math.abs(value) + " " + unit[0] + (Math.abs(value) === 1 ? "" : "s");
        return value < 0 ? count + " ago" : "in " + count;
      }
    }
    return date.toLocaleString();
  }

  function refreshRelativeTimes() {
    var now = Date.now();
    Array.prototype.forEach.call(document.querySelectorAll("time[data-relative]"), function (node) {
      var value = node.getAttribute("datetime");
      if (!value) return;
      var date = new Date(value);
      if (isNaN(date.getTime())) return;
      if (!node.title) node.title = date.toLocaleString();
      node.textContent = relativeText(date, now);
    });
  }

  // ---- copy to clipboard ----------------------------------------------------------

  function setupCopy(button) {
    button.addEventListener("click", function () {
      var spec = button.dataset.copy;
      var text = spec;
      if (spec && /^[#.\[]/.test(spec)) {
        var source = document.querySelector(spec);
        text = source ? (source.value !== undefined ? source.value : source.textContent) : "";
      }
      var done = function () {
        toast("Copied", "", "success");
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () {
          toast("Copy failed", "Select the text and copy it by hand.", "warning");
        });
      } else {
        var area = el("textarea");
        area.value = text;
        area.setAttribute("readonly", "");
        area.style.position = "fixed";
        area.style.opacity = "0";
        document.body.appendChild(area);
        area.select();
        try {
          document.execCommand("copy");
          done();
        } catch (error) {
          toast("Copy failed", "Select the text and copy it by hand.", "warning");
        }
        area.remove();
      }
    });
  }

  // ---- small markup switches -------------------------------------------------------

  function setupAutosubmit(select) {
    select.addEventListener("change", function () {
      if (select.form) select.form.submit();
    });
  }

  function setupReload(node) {
    var delay = parseInt(node.dataset.reloadAfter, 10);
    if (!isNaN(delay) && delay >= 0) {
      setTimeout(function () {
        window.location.reload();
      }, delay);
    }
  }

  function applyWidth(node) {
    var percent = parseFloat(node.dataset.width);
    if (!isNaN(percent)) node.style.width = Math.max(0, Math.min(100, percent)) + "%";
  }

  // ---- wiring ---------------------------------------------------------------------

  function each(selector, fn) {
    Array.prototype.forEach.call(document.querySelectorAll(selector), fn);
  }

  onReady(function () {
    each("form.needs-validation", setupValidation);
    each("form[data-confirm]", setupConfirm);
    each("input[data-live-search]", setupLiveSearch);
    each("[data-copy]", setupCopy);
    each("select[data-autosubmit]", setupAutosubmit);
    each("[data-reload-after]", setupReload);
    each("[data-width]", applyWidth);
    dynserv.logViewers = [];
    each(".log-viewer[data-stream-url]", function (node) {
      dynserv.logViewers.push(new LogViewer(node));
    });
    refreshRelativeTimes();
    setInterval(refreshRelativeTimes, 30000);
    each('[data-bs-toggle="tooltip"]', function (node) {
      if (hasBootstrap("Tooltip")) new window.bootstrap.Tooltip(node);
    });
    showFlash();
  });

  dynserv.toast = toast;
  dynserv.escapeHtml = escapeHtml;
  dynserv.ansiToHtml = ansiToHtml;
  dynserv.renderAnsi = renderAnsi;
  dynserv.LogViewer = LogViewer;
  dynserv.liveSearch = liveSearch;
  dynserv.serverSearch = serverSearch;
  dynserv.setExecutionStatus = setExecutionStatus;
  dynserv.setStatusBadge = setStatusBadge;
  dynserv.FINAL_STATUSES = FINAL_STATUSES;
  dynserv.refreshRelativeTimes = refreshRelativeTimes;
})();
