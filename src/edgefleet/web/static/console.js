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
  // a secret shown once leaves the page with its dialog
  document.addEventListener("close", (ev) => {
    const secret = ev.target.querySelector && ev.target.querySelector("[data-secret]");
    if (secret) secret.textContent = "";
  }, true);

  // requests to one gateway (deviceTasks): the gateway's answer is shown as it came
  async function deviceRequest(uuid, method, resource, data) {
    const out = document.getElementById("device-result");
    out.textContent = "Waiting for the gateway…";
    try {
      const payload = { method, resource };
      if (data !== undefined) payload.data = data;
      const answer = await api("POST", "/api/v1/deviceTasks", { deviceUUID: uuid, payload });
      out.textContent = JSON.stringify(answer, null, 2);
    } catch (e) {
      out.textContent = "";
      flash(e.message, "error");
    }
  }
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("[data-device-request]");
    if (!b) return;
    if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) return;
    deviceRequest(b.dataset.uuid, b.dataset.method, b.dataset.resource);
  });
  document.addEventListener("submit", (ev) => {
    const form = ev.target;
    if (form.matches("[data-device-form]")) {
      ev.preventDefault();
      let data;
      if (form.data.value.trim()) {
        try { data = JSON.parse(form.data.value); }
        catch (e) { flash("data is not JSON: " + e.message, "error"); return; }
      }
      deviceRequest(form.dataset.uuid, form.method.value, form.resource.value, data);
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
        if (xhr.status >= 400) { flash(problemText(xhr.responseText, xhr.status), "error"); return; }
        bar.value = 100;
        out.textContent = JSON.stringify(JSON.parse(xhr.responseText), null, 2);
        flash("Uploaded", "ok");
        form.reset();
        htmx.trigger(document.body, "refresh");
      };
      xhr.onerror = () => flash("upload failed: the connection dropped", "error");
      xhr.send(new FormData(form));
    }
  });

  // bulk actions on the selected gateways
  document.addEventListener("change", (ev) => {
    if (ev.target.matches("[data-select-all]")) {
      document.querySelectorAll("[data-select]").forEach((c) => { c.checked = ev.target.checked; });
    }
  });
  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("[data-bulk-action]");
    if (!b) return;
    const uuids = [...document.querySelectorAll("[data-select]:checked")].map((c) => c.value);
    if (!uuids.length) { flash("Select gateways first", "error"); return; }
    try {
      if (b.dataset.bulkAction === "group") {
        const group = b.form.group.value;
        await api("POST", "/api/v1/groups/" + group + "/devices", uuids);
        flash(uuids.length + " added to the group", "ok");
      } else if (b.dataset.bulkAction === "reboot") {
        if (!window.confirm("Reboot " + uuids.length + " gateways?")) return;
        const r = await api("POST", "/api/v1/rollouts", {
          name: "reboot " + uuids.length + " gateways", target: { devices: uuids },
          payload: { method: "post", resource: "/system/reboot" },
        });
        location.href = "/console/tasks/" + r.uuid;
        return;
      }
      htmx.trigger(document.body, "refresh");
    } catch (e) { flash(e.message, "error"); }
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
