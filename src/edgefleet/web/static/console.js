// edgefleet console: the few behaviours htmx does not give by itself.
// Every change goes to the JSON API with the session's CSRF token; fragments reload on
// "refresh", fired after a change and on each event of the live stream.
(function () {
  "use strict";
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function flash(message, kind) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message;
    box.className = kind || "error";
    if (kind === "ok") setTimeout(() => { if (box.textContent === message) box.textContent = ""; }, 4000);
  }

  function problemText(text, status) {
    try {
      const body = JSON.parse(text);
      return body.detail || body.message || body.title || ("error " + status);
    } catch (e) {
      return "error " + status;
    }
  }

  async function api(method, path, body) {
    const headers = { "Accept": "application/json", "X-CSRF-Token": csrf() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    if (!r.ok) throw new Error(problemText(text, r.status));
    return text ? JSON.parse(text) : null;
  }
  window.edgefleet = { api, flash };

  function showSecret(value) {
    const dialog = document.getElementById("secret-dialog");
    dialog.querySelector("[data-secret]").textContent = value;
    dialog.showModal();
  }

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (form.matches("[data-login]")) {
      ev.preventDefault();
      const err = document.getElementById("login-error");
      try {
        const body = await api("POST", "/api/v1/auth/login", {
          email: form.email.value, password: form.password.value,
        });
        location.href = body.user.mustChangePassword ? "/console/password" : form.dataset.next;
      } catch (e) {
        err.textContent = e.message;
        err.hidden = false;
      }
    } else if (form.matches("[data-password]")) {
      ev.preventDefault();
      const err = document.getElementById("password-error");
      try {
        await api("PUT", "/api/v1/users/me/password", {
          currentPassword: form.currentPassword.value, newPassword: form.newPassword.value,
        });
        location.href = "/console/";
      } catch (e) {
        err.textContent = e.message;
        err.hidden = false;
      }
    }
  });

  document.addEventListener("click", async (ev) => {
    const t = ev.target.closest("[data-logout], [data-copy], [data-close-dialog]");
    if (!t) return;
    if (t.matches("[data-logout]")) {
      try { await api("POST", "/api/v1/auth/logout"); } catch (e) { /* gone anyway */ }
      location.href = "/console/login";
    } else if (t.matches("[data-copy]")) {
      const text = document.querySelector(t.dataset.copy).textContent;
      try { await navigator.clipboard.writeText(text); flash("Copied", "ok"); }
      catch (e) { flash("Copy it by hand: the browser refused the clipboard", "error"); }
    } else if (t.matches("[data-close-dialog]")) {
      t.closest("dialog").close();
    }
  });

  document.addEventListener("htmx:configRequest", (ev) => {
    ev.detail.headers["X-CSRF-Token"] = csrf();
    ev.detail.headers["Accept"] = ev.detail.verb === "get" ? "text/html" : "application/json";
  });

  // API calls made by htmx (hx-post … hx-swap="none" data-api): report, then refresh
  document.addEventListener("htmx:afterRequest", (ev) => {
    const elt = ev.detail.elt;
    if (!elt.matches || !elt.matches("[data-api]")) return;
    const xhr = ev.detail.xhr;
    if (xhr.status >= 400 || xhr.status === 0) {
      flash(problemText(xhr.responseText, xhr.status), "error");
      return;
    }
    if (elt.dataset.secretField) {
      try { showSecret(JSON.parse(xhr.responseText)[elt.dataset.secretField]); } catch (e) { /* none */ }
    }
    flash(elt.dataset.done || "Done", "ok");
    if (elt.tagName === "FORM" && elt.dataset.reset !== undefined) elt.reset();
    htmx.trigger(document.body, "refresh");
  });
  // errors of htmx calls are not swapped in: say them
  document.addEventListener("htmx:beforeSwap", (ev) => {
    if (ev.detail.xhr.status >= 400 && ev.detail.xhr.status !== 401) {
      ev.detail.shouldSwap = false;
    }
    if (ev.detail.xhr.status === 401) location.href = "/console/login?next=" + encodeURIComponent(location.pathname);
  });

  // live: each stored event refreshes the page's fragments (at most twice a second)
  function live() {
    if (!document.body.dataset.live || !window.EventSource) return;
    let pending = null;
    const source = new EventSource("/api/v1/events/stream");
    source.onmessage = source.onerror = null;
    const kick = () => {
      if (pending) return;
      pending = setTimeout(() => { pending = null; htmx.trigger(document.body, "refresh"); }, 500);
    };
    ["device_online", "device_offline", "property_update", "gateway_event", "job_update",
     "task_update", "device_registered", "device_deleted"].forEach((t) => source.addEventListener(t, kick));
  }
  document.addEventListener("DOMContentLoaded", live);
})();
