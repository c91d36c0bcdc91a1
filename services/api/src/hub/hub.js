// Pulse Hub: progressive enhancement only. Every page and action works without this file;
// with it, counts and the Active/Paused toggles stay live, and risky forms ask first.
"use strict";

(function () {
  const csrf = () => {
    const m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.content : "";
  };

  // Ask before a form with data-confirm is submitted.
  document.addEventListener("submit", (event) => {
    const form = event.target;
    const question = form.dataset && form.dataset.confirm;
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  // A header checkbox that selects every row's checkbox of the same name.
  document.addEventListener("change", (event) => {
    const box = event.target;
    const name = box.dataset && box.dataset.selectAll;
    if (!name) return;
    const form = box.closest("form");
    (form || document).querySelectorAll(`input[type=checkbox][name="${name}"]`)
      .forEach((b) => { b.checked = box.checked; });
  });

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
    (children || []).forEach((c) => e.append(c));
    return e;
  }

  function toggleFor(id, status) {
    if (status === "ACTIVE") {
      const form = el("form", { class: "inline", method: "post", action: `/hub/sequences/${id}/pause` }, [
        el("input", { type: "hidden", name: "csrf", value: csrf() }),
        el("input", { type: "hidden", name: "return_to", value: location.pathname + location.search }),
        el("button", { class: "toggle on", type: "submit", role: "switch", "aria-checked": "true",
          title: "Active: click to pause every send of this sequence" }, [el("span", { class: "knob" }), "Active"]),
      ]);
      return form;
    }
    if (status === "PAUSED") {
      return el("a", { class: "toggle off", role: "switch", "aria-checked": "false", href: `/hub/sequences/${id}/resume`,
        title: "Paused: click to see what resuming would send, then resume" }, [el("span", { class: "knob" }), "Paused"]);
    }
    return el("span", { class: "muted" }, ["deleted"]);
  }

  function apply(stats) {
    stats.forEach((s) => {
      document.querySelectorAll(`[data-sequence="${s.sequence_id}"]`).forEach((row) => {
        const shown = { ...s, bounced: s.bounced + s.complained };
        ["enrolled", "active", "completed", "sends_today", "replied", "bounced"].forEach((f) => {
          const cell = row.querySelector(`[data-field="${f}"]`);
          if (cell && cell.textContent !== String(shown[f])) cell.textContent = String(shown[f]);
        });
      });
      document.querySelectorAll(`[data-sequence="${s.sequence_id}"] [data-field="status"], h1 [data-field="status"]`)
        .forEach((badge) => {
          if (badge.closest("h1") && !document.querySelector(`[data-toggle="${s.sequence_id}"]`)) return;
          if (badge.textContent !== s.status) {
            badge.textContent = s.status;
            badge.className = `badge ${s.status.toLowerCase()}`;
          }
        });
      document.querySelectorAll(`[data-toggle="${s.sequence_id}"]`).forEach((cell) => {
        if (cell.dataset.status === s.status) return;
        cell.dataset.status = s.status;
        cell.replaceChildren(toggleFor(s.sequence_id, s.status));
      });
    });
  }

  const live = document.querySelector("[data-live]");
  if (live) {
    document.querySelectorAll("[data-toggle]").forEach((cell) => {
      const on = cell.querySelector(".toggle.on");
      const off = cell.querySelector(".toggle.off");
      cell.dataset.status = on ? "ACTIVE" : off ? "PAUSED" : "DELETED";
    });
    const refresh = async () => {
      try {
        const r = await fetch(live.dataset.live, { credentials: "same-origin", headers: { Accept: "application/json" } });
        if (r.ok) apply(await r.json());
      } catch (_) { /* offline for a moment: try again next tick */ }
    };
    setInterval(() => { if (!document.hidden) refresh(); }, 3000);
  }

  // The step editor: with JavaScript, cards can also be dragged into a new order. The form
  // sends the cards in the order they stand, so a drag is saved like the move buttons.
  const cards = document.querySelector("ol.step-cards");
  if (cards) {
    let dragged = null;
    const renumber = () => {
      const all = [...cards.querySelectorAll("li.step-card")];
      all.forEach((card, i) => {
        const title = card.querySelector("h3 .step-number");
        if (title) title.textContent = `Step ${i + 1}`;
        card.querySelectorAll('button[name="do"]').forEach((b) => {
          const [verb] = b.value.split(":");
          b.value = `${verb}:${i}`;
          if (verb === "up") b.disabled = i === 0;
          if (verb === "down") b.disabled = i === all.length - 1;
        });
      });
    };
    cards.addEventListener("dragstart", (e) => {
      dragged = e.target.closest("li.step-card");
      if (dragged) dragged.classList.add("dragging");
    });
    cards.addEventListener("dragend", () => {
      if (dragged) dragged.classList.remove("dragging");
      dragged = null;
      renumber();
    });
    cards.addEventListener("dragover", (e) => {
      const over = e.target.closest("li.step-card");
      if (!dragged || !over || over === dragged) return;
      e.preventDefault();
      const box = over.getBoundingClientRect();
      const after = e.clientY > box.top + box.height / 2;
      cards.insertBefore(dragged, after ? over.nextSibling : over);
    });
  }
})();
