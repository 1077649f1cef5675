/*
 * Dynamic Servers: a search box over a long <select>.
 *
 * <input data-filter-select="ID"> hides the options of select#ID whose text does not
 * hold every word typed (case-insensitive). Selected options always stay visible, so
 * a search never hides (or drops) what is chosen; the form posts the select as usual.
 */
(function () {
  "use strict";

  function words(text) {
    return text.toLowerCase().split(/\s+/).filter(function (w) { return w.length > 0; });
  }

  function filter(select, query) {
    var wanted = words(query);
    var options = select.options;
    for (var i = 0; i < options.length; i++) {
      var option = options[i];
      var text = option.textContent.toLowerCase();
      var match = wanted.every(function (w) { return text.indexOf(w) !== -1; });
      option.hidden = !(match || option.selected);
    }
  }

  document.querySelectorAll("input[data-filter-select]").forEach(function (input) {
    var select = document.getElementById(input.getAttribute("data-filter-select"));
    if (!select) return;
    input.addEventListener("input", function () { filter(select, input.value); });
    input.addEventListener("keydown", function (event) {
      // Enter in the search box must not submit the form half filled.
      if (event.key === "Enter") event.preventDefault();
    });
  });
})();
