// Keyboard operation of the moderation queue and item pages (no build step; plain DOM).
// Keys act only when no text field has focus, except Ctrl+Enter (release an edit) and Escape.
(function () {
  "use strict";

  function typing(target) {
    return target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName)) &&
      !(target.tagName === "INPUT" && /^(checkbox|radio|button|submit)$/.test(target.type));
  }

  function submit(form) {
    if (!form || form.dataset.sent) return;
    form.dataset.sent = "1"; // one decision per press, even with key repeat
    form.requestSubmit();
  }

  function helpToggle() {
    var dialog = document.getElementById("keys-dialog");
    if (!dialog) return;
    if (dialog.open) dialog.close(); else dialog.showModal();
  }

  function countdowns() {
    var now = Date.now();
    document.querySelectorAll(".sla[data-deadline]").forEach(function (el) {
      var left = Math.round((Date.parse(el.dataset.deadline) - now) / 1000);
      var abs = Math.abs(left), h = Math.floor(abs / 3600), m = Math.floor((abs % 3600) / 60), s = abs % 60;
      var text = (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
      el.textContent = left >= 0 ? text + " left" : "overdue by " + text;
      el.classList.toggle("overdue", left < 0);
    });
  }

  // --- the item page ---
  function itemPage(root) {
    var editForm = document.getElementById("edit-form");
    var rejectForm = document.getElementById("reject-form");
    var mine = root.dataset.mine === "1";

    function open(form, focus) {
      [editForm, rejectForm].forEach(function (f) { if (f) f.hidden = f !== form; });
      form.hidden = false;
      if (focus) { focus.focus(); if (focus.select) focus.select(); }
    }
    function closeAll() {
      [editForm, rejectForm].forEach(function (f) { if (f) f.hidden = true; });
      document.getElementById("approve") && document.getElementById("approve").focus();
    }
    var editOpen = document.getElementById("edit-open");
    if (editOpen) editOpen.addEventListener("click", function () { open(editForm, document.getElementById("edited_text")); });
    var rejectOpen = document.getElementById("reject-open");
    if (rejectOpen) rejectOpen.addEventListener("click", function () { open(rejectForm, rejectForm.querySelector("input[type=radio]")); });
    document.querySelectorAll("[data-close]").forEach(function (b) { b.addEventListener("click", closeAll); });

    document.addEventListener("keydown", function (ev) {
      if (ev.key === "Escape") { closeAll(); return; }
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
        if (editForm && !editForm.hidden) { ev.preventDefault(); submit(editForm); }
        else if (rejectForm && !rejectForm.hidden && rejectForm.querySelector("input[type=radio]:checked")) { ev.preventDefault(); submit(rejectForm); }
        return;
      }
      if (typing(ev.target) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
      var decidable = mine && root.dataset.status === "pending";
      if (rejectForm && !rejectForm.hidden && /^[1-9]$/.test(ev.key)) {
        var radio = rejectForm.querySelector('input[data-key="' + ev.key + '"]');
        if (!radio) return;
        ev.preventDefault();
        radio.checked = true;
        if (radio.value === "other") document.getElementById("reject_comment").focus(); // a comment is required
        else submit(rejectForm);
        return;
      }
      switch (ev.key) {
        case "a": if (decidable) { ev.preventDefault(); submit(document.getElementById("approve-form")); } break;
        case "e": if (decidable) { ev.preventDefault(); open(editForm, document.getElementById("edited_text")); } break;
        case "r": if (decidable) { ev.preventDefault(); open(rejectForm, null); rejectForm.querySelector("fieldset").focus(); } break;
        case "u": if (decidable) { ev.preventDefault(); submit(document.getElementById("release-form")); } break;
        case "j": if (root.dataset.nextUrl) location.href = root.dataset.nextUrl; break;
        case "k": if (root.dataset.previousUrl) location.href = root.dataset.previousUrl; break;
        case "q": location.href = root.dataset.queueUrl; break;
        case "?": helpToggle(); break;
      }
    });
    var approve = document.getElementById("approve");
    if (approve && !approve.disabled) approve.focus();
  }

  // --- the queue page ---
  function queuePage() {
    function rows() { return Array.prototype.slice.call(document.querySelectorAll("tr[data-href]")); }
    function current() { return rows().indexOf(document.activeElement); }
    function focusRow(i) {
      var all = rows();
      if (!all.length) return;
      i = Math.max(0, Math.min(all.length - 1, i));
      all[i].focus();
    }
    function selectedCount() {
      var n = document.querySelectorAll('#bulk-form input[name=items]:checked').length;
      var out = document.getElementById("bulk-count");
      if (out) out.textContent = String(n);
      return n;
    }
    var rejecting = false;
    document.addEventListener("change", function (ev) { if (ev.target.name === "items") selectedCount(); });
    document.addEventListener("htmx:afterSwap", function () { rejecting = false; selectedCount(); });
    document.addEventListener("keydown", function (ev) {
      if (ev.key === "Escape") { rejecting = false; return; }
      if (typing(ev.target) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
      var form = document.getElementById("bulk-form");
      if (rejecting && /^[1-9]$/.test(ev.key)) {
        var radio = form.querySelector('#bulk-reject input[data-key="' + ev.key + '"]');
        if (!radio) return;
        ev.preventDefault();
        radio.checked = true;
        if (radio.value === "other") { form.querySelector('#bulk-reject input[name=comment]').focus(); return; }
        rejecting = false;
        form.requestSubmit(document.getElementById("bulk-reject-submit"));
        return;
      }
      var i = current();
      switch (ev.key) {
        case "j": ev.preventDefault(); focusRow(i < 0 ? 0 : i + 1); break;
        case "k": ev.preventDefault(); focusRow(i < 0 ? 0 : i - 1); break;
        case "Enter": case "o":
          if (i >= 0) { ev.preventDefault(); location.href = rows()[i].dataset.href; }
          break;
        case "x":
          if (i >= 0) { var box = rows()[i].querySelector("input[name=items]"); box.checked = !box.checked; selectedCount(); }
          break;
        case "n": ev.preventDefault(); submit(document.getElementById("claim-next")); break;
        case "A": if (form && selectedCount()) { ev.preventDefault(); form.requestSubmit(document.getElementById("bulk-approve")); } break;
        case "R": if (form && selectedCount()) { ev.preventDefault(); rejecting = true; document.getElementById("bulk-reject").classList.add("active"); } break;
        case "?": helpToggle(); break;
      }
    });
    document.addEventListener("click", function (ev) {
      var row = ev.target.closest && ev.target.closest("tr[data-href]");
      if (row && !ev.target.closest("input,a,button,label")) location.href = row.dataset.href;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var root = document.querySelector("[data-moderation-page]");
    if (!root) return;
    if (root.dataset.moderationPage === "item") itemPage(root); else queuePage();
    countdowns();
    setInterval(countdowns, 1000);
  });
})();
