// themetune web UI: small progressive enhancements, no framework.
// - [data-autosubmit] selects submit their form on change (language switch).
// - form[data-confirm] asks before submitting (cancel a study).
// - #live[data-live-url] refreshes the study's live part every 2 s while it runs.
// - #plot[data-plot-url] draws an Optuna figure with plotly.js, again while it runs.
// - the new-study form reloads its defaults when the theme or preset changes.
// - [data-width] bars get their width (a percent) here: the Content-Security-Policy
//   blocks style="" attributes in the HTML, not styles set from a script.
"use strict";

(function () {
  const LIVE_MS = 2000;
  const PLOT_MS = 5000;

  function barWidths(root) {
    root.querySelectorAll("[data-width]").forEach((el) => {
      el.style.width = `${Number(el.dataset.width) || 0}%`;
    });
  }

  function autosubmit() {
    document.querySelectorAll("[data-autosubmit]").forEach((el) => {
      el.addEventListener("change", () => el.form.submit());
    });
  }

  function confirms() {
    document.querySelectorAll("form[data-confirm]").forEach((form) => {
      form.addEventListener("submit", (event) => {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    });
  }

  function live() {
    const box = document.getElementById("live");
    if (!box || box.dataset.active !== "1") return;
    const tick = async () => {
      let response;
      try {
        response = await fetch(box.dataset.liveUrl, { headers: { "X-Requested-With": "fetch" } });
      } catch (err) {
        setTimeout(tick, LIVE_MS * 2); // server restarting: try again later
        return;
      }
      if (response.redirected || !response.ok) {
        window.location.reload(); // logged out, or the study is gone
        return;
      }
      box.innerHTML = await response.text();
      barWidths(box);
      if (response.headers.get("X-Study-Active") === "1") {
        setTimeout(tick, LIVE_MS);
      } else {
        // The study ended: reload once so that the buttons match its new state.
        window.location.reload();
      }
    };
    setTimeout(tick, LIVE_MS);
  }

  function plot() {
    const el = document.getElementById("plot");
    if (!el) return;
    const message = document.getElementById("plot-message");
    const config = { responsive: true, displaylogo: false };
    const draw = async () => {
      let data;
      try {
        const response = await fetch(el.dataset.plotUrl);
        if (!response.ok) throw new Error(String(response.status));
        data = await response.json();
      } catch (err) {
        message.textContent = el.dataset.errorText;
        message.hidden = false;
        return;
      }
      if (data.figure) {
        message.hidden = true;
        el.hidden = false;
        window.Plotly.react(el, data.figure.data, data.figure.layout, config);
      } else {
        el.hidden = true;
        message.textContent = data.message;
        message.hidden = false;
      }
      if (data.active) setTimeout(draw, PLOT_MS);
    };
    draw();
  }

  function studyForm() {
    const form = document.getElementById("study-form");
    if (!form) return;
    let dirty = false;
    form.querySelectorAll("textarea, input").forEach((el) => {
      el.addEventListener("input", () => { dirty = true; });
    });
    ["id_theme", "id_preset"].forEach((id) => {
      const select = document.getElementById(id);
      if (!select) return;
      select.addEventListener("change", () => {
        // The defaults depend on both: reload them unless the user has typed edits.
        if (dirty && !window.confirm(form.dataset.reloadConfirm)) return;
        const theme = document.getElementById("id_theme").value;
        const preset = document.getElementById("id_preset").value;
        const url = new URL(form.dataset.reloadUrl, window.location.href);
        url.searchParams.set("theme", theme);
        url.searchParams.set("preset", preset);
        window.location.assign(url.toString());
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    barWidths(document);
    autosubmit();
    confirms();
    live();
    plot();
    studyForm();
  });
})();
