// The new-study page's search space rows (a Django formset, prefix "params"), better
// with JS; the page works without it (an "Add row" submit button and Remove checkboxes).
// - "Add row" clones the <template> row, with the chosen key's type and choices.
// - "Remove" hides the row and ticks its DELETE box, so the server drops it.
// - A row shows only the inputs of its type: a range for float/int, choices for categorical.
// - Choosing a key shows its description and the values it accepts.
// No inline script or style: the CSP allows neither.
"use strict";

(function () {
  const PREFIX = "params";

  function keyInfo(name) {
    const table = document.getElementById("tunable-keys");
    if (!table || !name) return null;
    return [...table.querySelectorAll("tr[data-key]")].find((tr) => tr.dataset.key === name)
      || null;
  }

  function showType(row) {
    const type = row.querySelector("select.param-type").value;
    row.querySelector('[data-shows="range"]').hidden = type === "categorical";
    row.querySelector('[data-shows="choices"]').hidden = type === "int" || type === "float";
  }

  function showKeyHelp(row) {
    const help = row.querySelector("[data-key-help]");
    const info = keyInfo(row.querySelector("select.param-name").value);
    help.textContent = "";
    if (!info) return;
    help.append(`${info.dataset.description} `);
    const accepts = document.createElement("span");
    accepts.className = "accepts";
    accepts.textContent = `${help.closest("form").dataset.acceptsLabel} ${info.dataset.accepts}`;
    help.append(accepts);
  }

  function isEmpty(row) {
    return ["input.num", "textarea.param-choices"].every((sel) =>
      [...row.querySelectorAll(sel)].every((el) => !el.value.trim()));
  }

  function startRow(row, name) {
    // A key chosen in an empty row starts it as the server's new row would.
    const info = keyInfo(name);
    if (!info) return;
    row.querySelector("select.param-type").value = info.dataset.type;
    row.querySelector("textarea.param-choices").value = info.dataset.choices;
  }

  function wire(row) {
    const name = row.querySelector("select.param-name");
    const type = row.querySelector("select.param-type");
    name.addEventListener("change", () => {
      if (isEmpty(row)) startRow(row, name.value);
      showType(row);
      showKeyHelp(row);
    });
    type.addEventListener("change", () => showType(row));
    const remove = row.querySelector("[data-remove-row]");
    const box = row.querySelector("[data-remove-box]");
    remove.hidden = false;
    box.hidden = true;
    remove.addEventListener("click", () => {
      box.querySelector('input[type="checkbox"]').checked = true;
      row.hidden = true;
    });
    if (box.querySelector('input[type="checkbox"]').checked) row.hidden = true;
    showType(row);
  }

  function addRow(rows, template, total, name) {
    const index = Number(total.value);
    const html = template.innerHTML.replaceAll("__prefix__", String(index));
    const holder = document.createElement("div");
    holder.innerHTML = html.trim();
    const row = holder.firstElementChild;
    rows.append(row);
    total.value = String(index + 1);
    const select = row.querySelector("select.param-name");
    select.value = name;
    startRow(row, name);
    wire(row);
    showKeyHelp(row);
    select.focus();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const rows = document.getElementById("param-rows");
    const template = document.getElementById("param-row-template");
    const total = document.getElementById(`id_${PREFIX}-TOTAL_FORMS`);
    const add = document.getElementById("add-row");
    if (!rows || !template || !total || !add) return;
    rows.querySelectorAll("[data-param-row]").forEach(wire);
    add.addEventListener("click", (event) => {
      event.preventDefault();
      const chosen = document.getElementById("add-param");
      addRow(rows, template, total, chosen.value);
      chosen.value = "";
    });
  });
})();
