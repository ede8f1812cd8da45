// edgefleet console: the few behaviours htmx does not give by itself.
// Every change goes to the JSON API with the session's CSRF token; fragments reload on
// "refresh", fired after a change and on each event of the live stream. A live refresh never
// overwrites what the user is doing: a fragment holding a changed form control is not reloaded
// until the change is saved or undone (and the page says so).
(function () {
  "use strict";
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  // --- translations (web/i18n.py: the console_js catalogue, embedded in the page) ---------
  const catalog = (() => {
    try { return JSON.parse(document.getElementById("i18n-catalog").textContent); }
    catch (e) { return { locale: "en", messages: {}, plurals: ["one", "other"] }; }
  })();
  const pluralRules = (() => {
    try { return new Intl.PluralRules(catalog.locale); } catch (e) { return null; }
  })();
  function fill(text, values) {
    return values ? text.replace(/\{(\w+)\}/g, (m, k) => (k in values ? String(values[k]) : m)) : text;
  }
  // t("Reboot {name}?", {name}) and tn("{n} gateway", "{n} gateways", n, {n}): gettext for scripts
  function t(message, values) {
    const found = catalog.messages[message];
    return fill(typeof found === "string" && found ? found : message, values);
  }
  function tn(singular, plural, n, values) {
    const forms = catalog.messages[singular];
    let text = n === 1 ? singular : plural;
    if (Array.isArray(forms) && forms.length) {
      const category = pluralRules ? pluralRules.select(n) : "other";
      const index = catalog.plurals.indexOf(category);
      text = forms[index >= 0 ? index : forms.length - 1] || text;
    }
    return fill(text, Object.assign({ n }, values || {}));
  }

  // --- messages: next to the control that caused them ----------------------------------------
  function flash(message, kind) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message;
    box.className = kind || "error";
    if (kind === "ok") setTimeout(() => { if (box.textContent === message) box.textContent = ""; }, 4000);
  }
  // The message box of a control: [data-message-for=<id>] if the page has one, else one made
  // right after the control (after its form for a form's button), so the message is where the
  // user looks and a screen reader announces it.
  function messageBox(elt) {
    if (!elt || !elt.isConnected) return null;
    const anchor = elt.closest("form, .btn-row, td, .field") || elt;
    let box = anchor.nextElementSibling;
    if (!box || !box.matches("[data-message]")) {
      box = document.createElement("p");
      box.dataset.message = "";
      box.setAttribute("role", "status");
      box.setAttribute("aria-live", "polite");
      anchor.after(box);
    }
    return box;
  }
  function say(elt, message, kind) {
    const box = messageBox(elt);
    if (!box) { flash(message, kind); return; }
    box.textContent = message;
    box.className = "message " + (kind || "error");
    box.setAttribute("role", kind === "ok" ? "status" : "alert");
    if (kind === "ok") setTimeout(() => { if (box.textContent === message) box.textContent = ""; }, 4000);
  }

  function problemText(text, status) {
    try {
      const body = JSON.parse(text);
      return body.detail || body.message || body.title || t("error {status}", { status });
    } catch (e) {
      return status ? t("error {status}", { status }) : t("the server could not be reached");
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
    if (!r.ok) {
      const err = new Error(problemText(text, r.status));
      err.status = r.status;
      throw err;
    }
    return text ? JSON.parse(text) : null;
  }
  const refresh = () => htmx.trigger(document.body, "refresh");
  // a refresh caused by the live stream, not by the user's own change
  const liveRefresh = () => htmx.trigger(document.body, "refresh", { live: true });
  window.edgefleet = Object.assign(window.edgefleet || {}, { api, flash, say, t, tn, refresh });

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
    } else if (form.matches("[data-language]")) {
      ev.preventDefault();
    }
  });

  // the language: a logged-in user's choice is stored with the account; on the login page a
  // cookie remembers it for this browser
  document.addEventListener("change", async (ev) => {
    const select = ev.target;
    if (!select.closest("[data-language]")) return;
    try {
      if (csrf()) await api("PATCH", "/api/v1/users/me", { locale: select.value });
      else document.cookie = "edgefleet_locale=" + encodeURIComponent(select.value) + "; path=/; max-age=31536000; samesite=lax";
      location.reload();
    } catch (e) { say(select, e.message, "error"); }
  });

  document.addEventListener("click", async (ev) => {
    const t_ = ev.target.closest("[data-logout], [data-copy], [data-close-dialog]");
    if (!t_) return;
    if (t_.matches("[data-logout]")) {
      try { await api("POST", "/api/v1/auth/logout"); } catch (e) { /* gone anyway */ }
      location.href = "/console/login";
    } else if (t_.matches("[data-copy]")) {
      const text = document.querySelector(t_.dataset.copy).textContent;
      try { await navigator.clipboard.writeText(text); say(t_, t("Copied"), "ok"); }
      catch (e) { say(t_, t("Copy it by hand: the browser refused the clipboard"), "error"); }
    } else if (t_.matches("[data-close-dialog]")) {
      t_.closest("dialog").close();
    }
  });
  // a secret shown once leaves the page with its dialog
  document.addEventListener("close", (ev) => {
    const secret = ev.target.querySelector && ev.target.querySelector("[data-secret]");
    if (secret) secret.textContent = "";
  }, true);
  // a menu (details) closes when the user clicks elsewhere or presses Escape
  document.addEventListener("click", (ev) => {
    document.querySelectorAll("details[data-menu][open]").forEach((m) => { if (!m.contains(ev.target)) m.open = false; });
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key !== "Escape") return;
    document.querySelectorAll("details[data-menu][open]").forEach((m) => { m.open = false; m.querySelector("summary").focus(); });
  });

  // requests to one gateway (deviceTasks): the gateway's answer is shown as it came
  async function deviceRequest(elt, uuid, method, resource, data) {
    const out = document.getElementById("device-result");
    out.textContent = t("Waiting for the gateway…");
    try {
      const payload = { method, resource };
      if (data !== undefined) payload.data = data;
      const answer = await api("POST", "/api/v1/deviceTasks", { deviceUUID: uuid, payload });
      out.textContent = JSON.stringify(answer, null, 2);
      if (method === "get" && resource === "/system/properties") {
        // the server stores what was read, in its next properties batch (about a second)
        [1500, 4000].forEach((ms) => setTimeout(refresh, ms));
      }
    } catch (e) {
      out.textContent = "";
      say(elt, e.message, "error");
    }
  }
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("[data-device-request]");
    if (!b) return;
    if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) return;
    deviceRequest(b, b.dataset.uuid, b.dataset.method, b.dataset.resource);
  });
  document.addEventListener("submit", (ev) => {
    const form = ev.target;
    if (form.matches("[data-device-form]")) {
      ev.preventDefault();
      let data;
      if (form.data.value.trim()) {
        try { data = JSON.parse(form.data.value); }
        catch (e) { say(form.data, t("data is not JSON: {error}", { error: e.message }), "error"); return; }
      }
      deviceRequest(form, form.dataset.uuid, form.method.value, form.resource.value, data);
    } else if (form.matches("[data-upload]")) {
      // multipart with a progress bar (fetch has no upload progress)
      ev.preventDefault();
      const bar = form.querySelector("progress");
      const out = form.parentElement.querySelector("[data-upload-result]");
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.dataset.upload);
      xhr.setRequestHeader("X-CSRF-Token", csrf());
      xhr.setRequestHeader("Accept", "application/json");
      bar.hidden = false; bar.value = 0;
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
      xhr.onload = () => {
        if (xhr.status >= 400) { say(form, problemText(xhr.responseText, xhr.status), "error"); return; }
        bar.value = 100;
        out.textContent = JSON.stringify(JSON.parse(xhr.responseText), null, 2);
        say(form, t("Uploaded"), "ok");
        form.reset();
        refresh();
      };
      xhr.onerror = () => say(form, t("upload failed: the connection dropped"), "error");
      xhr.send(new FormData(form));
    }
  });

  // a gateway's name, description, tags and attributes (PATCH /api/v1/devices/{uuid})
  function attributesOf(text) {
    const out = {};
    text.split("\n").forEach((line, i) => {
      if (!line.trim()) return;
      const at = line.indexOf("=");
      if (at < 1) throw new Error(t("attributes, line {line}: write name = value", { line: i + 1 }));
      const key = line.slice(0, at).trim();
      const raw = line.slice(at + 1).trim();
      let value = raw;
      if (/^(-?\d+(\.\d+)?|true|false|null|\{.*\}|\[.*\])$/.test(raw)) {
        try { value = JSON.parse(raw); } catch (e) { value = raw; }
      }
      out[key] = value;
    });
    return out;
  }
  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!form.matches("[data-device-edit]")) return;
    ev.preventDefault();
    const button = form.querySelector('[type="submit"]');
    button.disabled = true;
    try {
      const name = form.displayName.value.trim();
      if (!name) throw new Error(t("A gateway needs a name"));
      const body = {
        displayName: name,
        description: form.description.value,
        tags: form.tags.value.split(/[\s,;]+/).filter(Boolean),
        attributes: attributesOf(form.attributes.value),
      };
      await api("PATCH", "/api/v1/devices/" + encodeURIComponent(form.dataset.uuid), body);
      form.querySelectorAll("input, textarea").forEach((c) => { c.defaultValue = c.value; });
      say(button, t("Saved"), "ok");
      refresh();
    } catch (e) {
      say(button, e.message, "error");
    } finally {
      button.disabled = false;
    }
  });

  document.addEventListener("htmx:configRequest", (ev) => {
    ev.detail.headers["X-CSRF-Token"] = csrf();
    ev.detail.headers["Accept"] = ev.detail.verb === "get" ? "text/html" : "application/json";
  });

  // --- unsaved changes pause the live refresh of their fragment -------------------------------
  function changed(control) {
    if (control.type === "checkbox" || control.type === "radio") return control.checked !== control.defaultChecked;
    if (control.tagName === "SELECT") return [...control.options].some((o) => o.selected !== o.defaultSelected);
    if (control.type === "hidden" || control.type === "submit" || control.type === "button") return false;
    return control.value !== control.defaultValue;
  }
  // a fragment is "dirty" when one of its forms (not a live filter) has a control changed
  function dirty(elt) {
    return [...elt.querySelectorAll("form:not([data-live-ok]) input, form:not([data-live-ok]) select, form:not([data-live-ok]) textarea")]
      .some((c) => !c.disabled && changed(c));
  }
  const UNSAVED = () => t("Live updates of this list are paused while you have unsaved changes: save or undo them to resume.");
  function pausedNote(elt, on, text) {
    let note = elt.previousElementSibling;
    if (!note || !note.matches("[data-paused-note]")) {
      if (!on) return;
      note = document.createElement("p");
      note.dataset.pausedNote = "";
      note.className = "paused-note";
      note.setAttribute("role", "status");
      elt.before(note);
    }
    note.hidden = !on;
    note.classList.toggle("floating", on && text === HELD);
    note.textContent = on ? (text || UNSAVED)() : "";
  }
  document.addEventListener("htmx:confirm", (ev) => {
    const elt = ev.detail.elt;
    const cause = ev.detail.triggeringEvent;
    if (!cause || cause.type !== "refresh" || !elt.matches("[hx-get]")) return;
    if (dirty(elt)) {
      ev.preventDefault();
      elt.dataset.paused = "1";
      pausedNote(elt, true);
    } else if (cause.detail && cause.detail.live && aiming(elt)) {
      ev.preventDefault();
      hold(elt);
    }
  });
  // (and rows asked for just before the pointer came are not swapped in under it)
  document.addEventListener("htmx:beforeSwap", (ev) => {
    const elt = ev.detail.target;
    const cause = ev.detail.requestConfig && ev.detail.requestConfig.triggeringEvent;
    if (elt && cause && cause.type === "refresh" && cause.detail && cause.detail.live && aiming(elt)) {
      ev.detail.shouldSwap = false;
      hold(elt);
    }
  });

  // --- rows do not move under a pointer aiming at one ----------------------------------------
  // A live list with a button on each row ([data-hold-under-pointer]: the events, where
  // Acknowledge and Clear ask no confirmation) holds still while the pointer moves over it,
  // so a click lands on the row aimed at; it catches up once the pointer leaves it or has
  // rested for HOLD_MS. The user's own changes refresh it at once.
  const HOLD_MS = 3000;
  const HELD = () => t("Live updates of this list wait while the pointer is on it.");
  let heldRetry = null;
  function hold(elt) {
    elt.dataset.held = "1";
    pausedNote(elt, true, HELD);
    clearTimeout(heldRetry);
    heldRetry = setTimeout(liveRefresh, HOLD_MS);
  }
  function aiming(elt) {
    return elt.matches("[data-hold-under-pointer]") && elt.matches(":hover")
      && Date.now() - Number(elt.dataset.aimedAt || 0) < HOLD_MS;
  }
  document.addEventListener("pointermove", (ev) => {
    const list = ev.target.closest && ev.target.closest("[data-hold-under-pointer]");
    if (list) list.dataset.aimedAt = String(Date.now());
  });
  document.addEventListener("pointerout", (ev) => {
    const list = ev.target.closest && ev.target.closest("[data-hold-under-pointer][data-held]");
    if (!list || (ev.relatedTarget && list.contains(ev.relatedTarget))) return;
    delete list.dataset.aimedAt;
    htmx.trigger(list, "refresh", { live: true });
  });
  // undoing the change (or saving, which refreshes) resumes the fragment
  document.addEventListener("change", (ev) => {
    const frag = ev.target.closest && ev.target.closest("[data-paused]");
    if (frag && !dirty(frag)) {
      delete frag.dataset.paused;
      pausedNote(frag, false);
      htmx.trigger(frag, "refresh");
    }
  });
  document.addEventListener("htmx:afterSwap", (ev) => {
    const elt = ev.detail.target;
    if (elt && elt.dataset && (elt.dataset.paused || elt.dataset.held)) {
      delete elt.dataset.paused;
      delete elt.dataset.held;
      pausedNote(elt, false);
    }
  });

  // API calls made by htmx (hx-post … hx-swap="none" data-api): report next to the control,
  // then refresh
  document.addEventListener("htmx:afterRequest", (ev) => {
    const elt = ev.detail.elt;
    if (!elt.matches || !elt.matches("[data-api]")) return;
    const xhr = ev.detail.xhr;
    if (xhr.status >= 400 || xhr.status === 0) {
      say(elt, problemText(xhr.responseText, xhr.status), "error");
      return;
    }
    if (elt.dataset.secretField) {
      try { showSecret(JSON.parse(xhr.responseText)[elt.dataset.secretField]); } catch (e) { /* none */ }
    }
    const done = elt.dataset.done || t("Done");
    if (elt.dataset.reload === undefined && !elt.dataset.redirect) {
      if (elt.closest("[hx-get]")) flash(done, "ok");  // the control is redrawn by the refresh
      else say(elt, done, "ok");
    }
    if (elt.tagName === "FORM") {
      // what was saved is the form's new default: it is no longer "unsaved"
      elt.querySelectorAll("input, select, textarea").forEach((c) => {
        if (c.tagName === "SELECT") [...c.options].forEach((o) => { o.defaultSelected = o.selected; });
        else if (c.type === "checkbox" || c.type === "radio") c.defaultChecked = c.checked;
        else c.defaultValue = c.value;
      });
      if (elt.dataset.reset !== undefined) elt.reset();
    }
    refresh();
  });
  // API calls by htmx after which the page moves (data-redirect) or reloads (data-reload)
  document.addEventListener("htmx:afterRequest", (ev) => {
    const elt = ev.detail.elt;
    if (!elt.matches || !elt.matches("[data-api]") || !ev.detail.successful) return;
    if (elt.dataset.redirect) location.href = elt.dataset.redirect;
    else if (elt.dataset.reload !== undefined) location.reload();
  });
  // errors of htmx calls are not swapped in: say them
  document.addEventListener("htmx:beforeSwap", (ev) => {
    if (ev.detail.xhr.status >= 400 && ev.detail.xhr.status !== 401) {
      ev.detail.shouldSwap = false;
    }
    if (ev.detail.xhr.status === 401) location.href = "/console/login?next=" + encodeURIComponent(location.pathname + location.search);
  });

  // live: each stored event refreshes the page's fragments (at most twice a second), and once
  // more a little later: the gateway's row may be written just after its event is sent. The
  // stream starts after the newest event when the page was rendered (data-live-after): an
  // event stored before the stream is subscribed is replayed, not lost (on a reconnection,
  // EventSource's Last-Event-ID takes over)
  function live() {
    if (!document.body.dataset.live || !window.EventSource) return;
    let pending = null;
    let trailing = null;
    const after = document.body.dataset.liveAfter;
    const query = after === undefined ? "" : "?after=" + encodeURIComponent(after);
    const source = new EventSource("/api/v1/events/stream" + query);
    const kick = () => {
      clearTimeout(trailing);
      trailing = setTimeout(liveRefresh, 1500);
      if (pending) return;
      pending = setTimeout(() => { pending = null; liveRefresh(); }, 500);
    };
    ["device_online", "device_offline", "property_update", "gateway_event", "job_update",
     "task_update", "device_registered", "device_deleted"].forEach((type) => source.addEventListener(type, kick));
  }
  document.addEventListener("DOMContentLoaded", live);

  // dashboard charts: drawn from the fragment's JSON each time it is swapped in
  const charts = {};
  function drawCharts() {
    const data = document.getElementById("dashboard-data");
    if (!data || !window.Chart) return;
    const sets = JSON.parse(data.textContent);
    document.querySelectorAll("canvas[data-chart]").forEach((canvas) => {
      const key = canvas.dataset.chart;
      if (charts[key]) charts[key].destroy();
      const rows = sets[key] || [];
      charts[key] = new Chart(canvas, {
        type: "bar",
        data: { labels: rows.map((r) => r[0]), datasets: [{ data: rows.map((r) => r[1]), backgroundColor: "#0b5cad" }] },
        options: { animation: false, plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
      });
    });
  }
  document.addEventListener("htmx:afterSettle", drawCharts);
})();
