// The page shell's behaviour, in plain DOM (no build step): the phone menu, copy buttons, and keeping
// keyboard focus where it was when htmx (or a script) replaces part of the page.
//
// Focus rules, for templates (see CONTRACTS.md of issue #17):
// - give every focusable control inside swapped content a stable `id`; after the swap the control
//   with the same id gets focus back, with the caret where it was (fallback: same `name` and
//   `data-focus-key`);
// - `data-autofocus` on an element of the new content: it gets focus after the swap;
// - `data-focus-after="some-id"` on a submit button: after the swap its request caused, the element
//   with that id gets focus (say, the moved item's button, or the new row);
// - when the focused control is gone, focus goes to the nearest `data-focus-fallback` element, else
//   to the nearest surviving container, never back to the top of the page.
// Scripts that replace a region themselves use `Steward.replaceKeepingFocus(region, html)`, or
// `const saved = Steward.focusSave(region)` ... `Steward.focusRestore(saved, region)`.
(function () {
  "use strict";

  // Loaded in <head> without defer, so this runs before the first paint: CSS collapses the phone
  // menu only for scripted pages (without JavaScript the menu simply stays open).
  document.documentElement.classList.add("js");

  function byId(id) {
    return id ? document.getElementById(id) : null;
  }

  function focusable(el) {
    return el && el.isConnected && !el.disabled && !el.closest("[hidden], [inert]");
  }

  // `selection` given: the same control coming back, so the page must not scroll; otherwise a new
  // element, scrolled into view if it is not.
  function focusOn(el, selection) {
    if (!focusable(el)) return false;
    if (!el.matches("a[href], button, input, select, textarea, summary, [tabindex]")) {
      el.setAttribute("tabindex", "-1"); // a container: focusable by script only, not in the Tab order
    }
    el.focus({ preventScroll: Boolean(selection) });
    if (selection && selection.start !== null && typeof el.setSelectionRange === "function") {
      try { el.setSelectionRange(selection.start, selection.end); } catch (e) { /* not a text input */ }
    }
    return document.activeElement === el;
  }

  // --- keeping focus across a replacement -----------------------------------------------------

  function focusSave(region) {
    var el = document.activeElement;
    if (!el || el === document.body || (region && !region.contains(el))) return null;
    var saved = {
      element: el,
      id: el.id,
      name: el.getAttribute("name"),
      key: el.getAttribute("data-focus-key"),
      start: null,
      end: null,
      ancestors: [],
    };
    try {
      saved.start = el.selectionStart;
      saved.end = el.selectionEnd;
    } catch (e) { /* buttons and selects have no caret */ }
    for (var a = el.parentElement; a && a !== document.body; a = a.parentElement) saved.ancestors.push(a);
    return saved;
  }

  function counterpart(el) {
    if (el.isConnected) return el;
    return el.id ? byId(el.id) : null;
  }

  function focusRestore(saved, scope, wanted) {
    scope = scope && scope.isConnected ? scope : document.body;
    var auto = scope.matches("[data-autofocus]") ? scope : scope.querySelector("[data-autofocus]");
    if (auto && focusOn(auto)) return;
    if (wanted && focusOn(byId(wanted))) return;
    if (!saved) return;
    if (saved.element.isConnected && document.activeElement === saved.element) return;
    var active = document.activeElement;
    if (active && active !== document.body && active.id && active.id === saved.id) return; // htmx did it
    if (saved.id && focusOn(byId(saved.id), saved)) return;
    if (saved.name && saved.key !== null) {
      var selector = "[name=\"" + CSS.escape(saved.name) + "\"][data-focus-key=\"" + CSS.escape(saved.key) + "\"]";
      if (focusOn(document.querySelector(selector), saved)) return;
    }
    // The control is gone: the nearest fallback among what survived, else the nearest container.
    for (var i = 0; i < saved.ancestors.length; i++) {
      var live = counterpart(saved.ancestors[i]);
      if (!live) continue;
      var fallback = live.matches("[data-focus-fallback]") ? live : live.querySelector("[data-focus-fallback]");
      if (fallback && focusOn(fallback)) return;
    }
    for (var j = 0; j < saved.ancestors.length; j++) {
      var container = counterpart(saved.ancestors[j]);
      if (container && focusOn(container, saved)) return;
    }
  }

  function replaceKeepingFocus(region, html) {
    var saved = focusSave(region);
    region.innerHTML = html;
    focusRestore(saved, region);
  }

  // htmx: note the focus before each swap, put it back once the new content has settled. Keyed by
  // the request, as a poll and a form's answer may be in flight at once.
  var pending = new WeakMap();
  var lastSubmit = null;

  document.addEventListener("submit", function (event) {
    lastSubmit = { form: event.target, button: event.submitter || null };
  }, true);

  document.addEventListener("htmx:beforeSwap", function (event) {
    var detail = event.detail;
    var target = detail.target;
    if (!detail.shouldSwap || !target || !detail.xhr) return;
    // A poll that brings back what is already shown changes nothing: skip it, so focus, text
    // selection and screen readers are left alone.
    if (target.hasAttribute("data-skip-unchanged")) {
      // CSRF tokens are masked afresh in every response: not a change.
      var text = detail.xhr.responseText.replace(/name="csrfmiddlewaretoken" value="[^"]*"/g, "");
      if (target.stewardLastResponse === text) {
        detail.shouldSwap = false;
        return;
      }
      target.stewardLastResponse = text;
    }
    var wanted = null;
    var source = detail.requestConfig && detail.requestConfig.elt;
    if (lastSubmit && source === lastSubmit.form) {
      wanted = lastSubmit.button && lastSubmit.button.getAttribute("data-focus-after");
      lastSubmit = null;
    }
    pending.set(detail.xhr, { saved: focusSave(target), wanted: wanted });
  });

  document.addEventListener("htmx:afterSettle", function (event) {
    var xhr = event.detail && event.detail.xhr;
    var p = xhr && pending.get(xhr);
    if (!p) return;
    pending.delete(xhr); // an outerHTML swap of several elements settles once per element
    focusRestore(p.saved, event.target, p.wanted);
  });

  // --- the phone menu ---------------------------------------------------------------------------

  function menuSetUp() {
    var toggle = byId("nav-toggle");
    var menu = toggle && byId(toggle.getAttribute("aria-controls"));
    if (!menu) return;
    toggle.hidden = false;

    function setOpen(open, returnFocus) {
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
      menu.classList.toggle("open", open);
      if (!open && returnFocus) toggle.focus();
    }

    toggle.addEventListener("click", function () {
      setOpen(toggle.getAttribute("aria-expanded") !== "true", false);
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && toggle.getAttribute("aria-expanded") === "true") {
        setOpen(false, menu.contains(document.activeElement));
      }
    });
    // A click elsewhere closes it, as menus do.
    document.addEventListener("click", function (event) {
      if (toggle.getAttribute("aria-expanded") === "true" && !menu.contains(event.target) && !toggle.contains(event.target)) {
        setOpen(false, false);
      }
    });

    // Mark the section the page belongs to (the longest link that prefixes the address).
    var best = null;
    menu.querySelectorAll("nav a[href]").forEach(function (a) {
      var path = new URL(a.href, location.href).pathname;
      if (path !== "/" && location.pathname.indexOf(path) === 0 && (!best || path.length > best.path.length)) {
        best = { a: a, path: path };
      }
    });
    if (best) best.a.setAttribute("aria-current", "page");
  }

  // --- copy buttons -------------------------------------------------------------------------------

  // One polite live region, so a screen reader hears "Copied" too.
  function status() {
    var region = byId("steward-status");
    if (!region) {
      region = document.createElement("div");
      region.id = "steward-status";
      region.className = "visually-hidden";
      region.setAttribute("role", "status");
      document.body.appendChild(region);
    }
    return region;
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    // Plain http on another host has no clipboard API: the old way still works from a click.
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    area.remove();
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button.copy[data-copy-target]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy-target"));
    if (!source) return;
    var text = "value" in source && source.tagName !== "BUTTON" ? source.value : source.textContent;
    var label = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", label);
    function say(words) {
      button.textContent = words;
      status().textContent = words;
      setTimeout(function () { button.textContent = label; }, 2000);
    }
    copyText(text.trim()).then(
      function () { say("Copied"); },
      function () { say("Copy failed: select the text and copy it by hand"); }
    );
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", menuSetUp);
  } else {
    menuSetUp();
  }

  window.Steward = { focusSave: focusSave, focusRestore: focusRestore, replaceKeepingFocus: replaceKeepingFocus };
})();
