/*
 * The script editor (scripts_edit.hbs):
 *
 *   textarea[data-code-editor]          becomes a CodeMirror 5 editor with line numbers,
 *     data-kind-select="#kind"          highlighting YAML (playbooks) or shell by the
 *                                       kind chosen there; the textarea stays the form
 *                                       field (kept in step on every change), so the
 *                                       page works without JavaScript too;
 *     or data-mode="yaml|text"          a fixed mode instead (a file of the script's
 *                                       tree, scripts_file.hbs);
 *   #body-error-position[data-line]     the line of the last save's validation error,
 *                                       marked in the editor and scrolled into view;
 *   button[data-add-variable="#table"]  adds an empty variable row to the table's body
 *                                       (fields var_N_name, var_N_default, …), so
 *                                       variables are added without saving first.
 */
(function () {
  "use strict";

  function modeFor(kind) {
    return kind === "shell" ? "shell" : "yaml";
  }

  function startEditor(textarea) {
    if (!window.CodeMirror) {
      return;
    }
    var fixedMode = textarea.getAttribute("data-mode");
    var kindSelect = fixedMode ? null : document.querySelector(textarea.getAttribute("data-kind-select") || "#kind");
    var readOnly = textarea.hasAttribute("readonly");
    var editor = window.CodeMirror.fromTextArea(textarea, {
      lineNumbers: true,
      mode: fixedMode ? (fixedMode === "yaml" ? "yaml" : null) : modeFor(kindSelect ? kindSelect.value : "playbook"),
      theme: "material-darker",
      indentUnit: 2,
      tabSize: 2,
      indentWithTabs: false,
      readOnly: readOnly,
      viewportMargin: Infinity,
      extraKeys: {
        // Tab indents with spaces: YAML allows no tabs.
        Tab: function (cm) {
          if (cm.somethingSelected()) {
            cm.indentSelection("add");
          } else {
            cm.replaceSelection("  ", "end");
          }
        },
        "Shift-Tab": function (cm) {
          cm.indentSelection("subtract");
        }
      }
    });
    editor.on("change", function () {
      editor.save();
    });
    if (kindSelect) {
      kindSelect.addEventListener("change", function () {
        editor.setOption("mode", modeFor(kindSelect.value));
      });
    }
    var position = document.getElementById("body-error-position");
    if (position) {
      var line = parseInt(position.getAttribute("data-line"), 10);
      var column = parseInt(position.getAttribute("data-column"), 10) || 1;
      if (line > 0 && line <= editor.lineCount()) {
        var index = line - 1;
        editor.addLineClass(index, "wrap", "ds-error-line");
        editor.addLineClass(index, "gutter", "ds-error-gutter");
        editor.setCursor({ line: index, ch: Math.max(column - 1, 0) });
        editor.scrollIntoView({ line: index, ch: 0 }, 120);
        position.classList.add("ds-link");
        position.addEventListener("click", function () {
          editor.focus();
          editor.setCursor({ line: index, ch: Math.max(column - 1, 0) });
        });
      }
    }
    textarea.setAttribute("data-editor-ready", "");
  }

  function cell(input) {
    var td = document.createElement("td");
    td.appendChild(input);
    return td;
  }

  function textInput(name, label, extraClass) {
    var input = document.createElement("input");
    input.className = "form-control form-control-sm" + (extraClass ? " " + extraClass : "");
    input.name = name;
    input.setAttribute("aria-label", label);
    return input;
  }

  function checkbox(name, label) {
    var input = document.createElement("input");
    input.className = "form-check-input";
    input.type = "checkbox";
    input.name = name;
    input.setAttribute("aria-label", label);
    return input;
  }

  function addVariableRow(table) {
    var body = table.tBodies[0];
    if (!body) {
      return;
    }
    // Rows are numbered from 0 without gaps: the server reads var_0… until one is missing.
    var index = body.rows.length;
    var row = document.createElement("tr");
    var name = textInput("var_" + index + "_name", "Variable name", "font-monospace");
    name.pattern = "[A-Za-z_][A-Za-z0-9_]*";
    name.maxLength = 128;
    var description = textInput("var_" + index + "_description", "Description");
    description.maxLength = 1000;
    row.appendChild(cell(name));
    row.appendChild(cell(textInput("var_" + index + "_default", "Default value")));
    row.appendChild(cell(description));
    var secret = cell(checkbox("var_" + index + "_secret", "Secret"));
    secret.className = "text-center";
    row.appendChild(secret);
    var required = cell(checkbox("var_" + index + "_required", "Required"));
    required.className = "text-center";
    row.appendChild(required);
    body.appendChild(row);
    name.focus();
  }

  function start() {
    var textarea = document.querySelector("textarea[data-code-editor]");
    if (textarea) {
      startEditor(textarea);
    }
    document.querySelectorAll("button[data-add-variable]").forEach(function (button) {
      var table = document.querySelector(button.getAttribute("data-add-variable"));
      if (!table) {
        return;
      }
      button.classList.remove("d-none");
      button.addEventListener("click", function () {
        addVariableRow(table);
      });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
