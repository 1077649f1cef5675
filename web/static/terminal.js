/*
 * The web terminal page (terminal.hbs): xterm.js in #terminal[data-terminal-url],
 * connected over a WebSocket to GET /api/v1/servers/{id}/terminal.
 *
 *   - what is typed (and pasted) goes out as text frames, the shell's output comes
 *     back as binary frames and is written to xterm as bytes (xterm decodes UTF-8,
 *     also across frames);
 *   - the terminal fills its box (fit addon) and follows the window: each new size is
 *     sent as {"resize": {"cols", "rows"}};
 *   - copy is xterm's selection, paste the browser's (Ctrl+Shift+V, the menu);
 *   - when the socket closes, the close frame's reason is shown; when it could not
 *     open at all, the same URL without an upgrade says why (its JSON error).
 * Screen-reader mode keeps the visible rows as text in the DOM as well.
 */
(function () {
  "use strict";

  var box = document.getElementById("terminal");
  if (!box || !window.Terminal) {
    return;
  }
  var statusBadge = document.getElementById("terminal-status");
  var errorBox = document.getElementById("terminal-error");
  var url = box.getAttribute("data-terminal-url");

  function setStatus(text, kind) {
    if (!statusBadge) {
      return;
    }
    statusBadge.textContent = text;
    statusBadge.className = "badge " + kind;
  }

  function showError(message) {
    if (!errorBox || !message) {
      return;
    }
    errorBox.textContent = message;
    errorBox.classList.remove("d-none");
  }

  var term = new window.Terminal({
    cursorBlink: true,
    screenReaderMode: true,
    scrollback: 5000,
    fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, 'Liberation Mono', monospace",
    fontSize: 14,
    theme: { background: "#000000" }
  });
  var fit = null;
  if (window.FitAddon && window.FitAddon.FitAddon) {
    fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
  }
  term.open(box);
  if (fit) {
    try {
      fit.fit();
    } catch (e) {
      // A hidden box has no size yet; the next resize fits it.
    }
  }

  var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  var socket = new WebSocket(
    scheme + window.location.host + url + "?cols=" + term.cols + "&rows=" + term.rows
  );
  socket.binaryType = "arraybuffer";
  var opened = false;

  function send(data) {
    if (socket.readyState === WebSocket.OPEN) {
      socket.send(data);
    }
  }

  socket.addEventListener("open", function () {
    opened = true;
    box.setAttribute("data-state", "open");
    setStatus("connected", "text-bg-success");
    term.focus();
  });
  socket.addEventListener("message", function (event) {
    if (typeof event.data === "string") {
      term.write(event.data);
    } else {
      term.write(new Uint8Array(event.data));
    }
  });
  socket.addEventListener("close", function (event) {
    box.setAttribute("data-state", "closed");
    setStatus("closed", "text-bg-secondary");
    if (opened) {
      var reason = event.reason || "the connection ended";
      term.write("\r\n\x1b[2m[terminal closed: " + reason + "]\x1b[0m\r\n");
      showError("The terminal closed: " + reason + ". Reload the page to open a new one.");
      return;
    }
    // The upgrade was refused: the same URL without an upgrade says why.
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json().catch(function () {
          return {};
        });
      })
      .then(function (body) {
        showError(body && body.error ? body.error : "The terminal could not be opened.");
      })
      .catch(function () {
        showError("The terminal could not be opened.");
      });
  });

  term.onData(function (data) {
    send(data);
  });
  term.onResize(function (size) {
    send(JSON.stringify({ resize: { cols: size.cols, rows: size.rows } }));
  });

  var pending = null;
  window.addEventListener("resize", function () {
    if (!fit) {
      return;
    }
    window.clearTimeout(pending);
    pending = window.setTimeout(function () {
      try {
        fit.fit();
      } catch (e) {
        // Nothing to fit while hidden.
      }
    }, 100);
  });
  // Leaving the page closes the terminal at once (the server would notice anyway).
  window.addEventListener("pagehide", function () {
    socket.close(1000, "the page closed");
  });
})();
