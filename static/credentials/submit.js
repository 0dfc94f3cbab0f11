// The submission page's small helpers. The page works without them.
(function () {
  "use strict";

  // The page's words in its language: data-say-* on #secret-field (templates/credentials/submit.html).
  function say(name, fallback) {
    var field = document.getElementById("secret-field");
    return (field && field.getAttribute("data-say-" + name)) || fallback;
  }

  function secretToggle() {
    var input = document.getElementById("id_secret");
    if (!input) return;
    var row = document.createElement("div");
    row.className = "secret-row";
    input.parentNode.insertBefore(row, input);
    row.appendChild(input);
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = say("show", "Show");
    button.setAttribute("aria-controls", "id_secret");
    button.setAttribute("aria-label", say("show-secret", "Show the Secret"));
    // The button's name says what it will do ("Hide the Secret" once shown),
    // so it carries no aria-pressed (a toggle whose name changes must not:
    // WAI-ARIA Authoring Practices, Button); the status line says what happened.
    var status = document.getElementById("secret-status");
    button.addEventListener("click", function () {
      var show = input.type === "password";
      input.type = show ? "text" : "password";
      button.textContent = show ? say("hide", "Hide") : say("show", "Show");
      button.setAttribute("aria-label", show ? say("hide-secret", "Hide the Secret") : say("show-secret", "Show the Secret"));
      if (status) status.textContent = status.getAttribute(show ? "data-shown" : "data-hidden");
    });
    row.appendChild(button);
  }

  function periodPicker() {
    var select = document.getElementById("id_expiry_period");
    var date = document.getElementById("id_expires_on");
    var data = document.getElementById("period-dates");
    if (!select || !date || !data) return;
    var dates = JSON.parse(data.textContent);
    select.addEventListener("change", function () {
      if (dates[select.value]) date.value = dates[select.value];
    });
    date.addEventListener("input", function () {
      if (dates[select.value] !== date.value) select.value = "";
    });
  }

  // An expiry under the short-expiry threshold shows the warning and its
  // checkbox; without JavaScript both are always shown.
  function shortExpiry() {
    var date = document.getElementById("id_expires_on");
    var box = document.getElementById("short-expiry");
    var confirm = document.getElementById("id_confirm_short_expiry");
    if (!date || !box || !confirm) return;
    var before = box.getAttribute("data-short-before");
    function update() {
      var isShort = date.value !== "" && date.value < before;
      box.hidden = !isShort && !confirm.checked && !box.classList.contains("invalid");
    }
    date.addEventListener("input", update);
    date.addEventListener("change", update);
    document.getElementById("id_expiry_period").addEventListener("change", update);
    update();
  }

  function oneSubmit() {
    var form = document.getElementById("key-form");
    if (!form) return;
    form.addEventListener("submit", function () {
      var button = form.querySelector("button[type=submit]");
      // Disabled after the browser has taken the form data, so the click still submits.
      window.setTimeout(function () {
        button.disabled = true;
        button.textContent = button.getAttribute("data-busy-label") || button.textContent;
      }, 0);
    });
  }

  function focusProblems() {
    var problems = document.getElementById("problems");
    if (problems) problems.focus();
  }

  document.addEventListener("DOMContentLoaded", function () {
    secretToggle();
    periodPicker();
    shortExpiry();
    oneSubmit();
    focusProblems();
  });
})();
