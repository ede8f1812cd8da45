// edgefleet console, groups and tasks pages (web/tasks/): the JSON bodies a plain htmx
// form cannot send (arrays, nested payloads, typed policies, local times as UTC), sent to the
// API with console.js's `edgefleet.api` (session CSRF header), then a `refresh` of the page.
(function () {
  "use strict";
  const api = (...args) => window.edgefleet.api(...args);
  const flash = (...args) => window.edgefleet.flash(...args);
  const say = (...args) => window.edgefleet.say(...args);
  const t = (...args) => window.edgefleet.t(...args);
  const tn = (...args) => window.edgefleet.tn(...args);
  const refresh = () => htmx.trigger(document.body, "refresh");
  const field = (form, name) => form.elements.namedItem(name);
  const value = (form, name) => { const f = field(form, name); return f ? String(f.value).trim() : ""; };
  const checked = (form, name) => { const f = form.querySelector('input[name="' + name + '"]:checked'); return f ? f.value : ""; };

  // a datetime-local value is the user's local time; the API reads a time without offset as UTC
  function localToIso(text) {
    const d = new Date(text);
    if (Number.isNaN(d.getTime())) throw new Error(t("the start time is not a valid date"));
    return d.toISOString();
  }
  function uuidList(text) { return text.split(/[\s,;]+/).filter(Boolean); }
  function int(form, name, what, min, max) {
    const raw = value(form, name);
    const n = Number(raw);
    if (raw === "" || !Number.isInteger(n) || n < min || n > max) {
      throw new Error(t("{what}: a whole number from {min} to {max}", { what, min, max }));
    }
    return n;
  }
  // sections shown for one choice of a radio group: hidden ones are disabled, so their
  // fields are neither validated nor sent
  function showFor(form, attr, current) {
    form.querySelectorAll("[" + attr + "]").forEach((el) => {
      const on = el.getAttribute(attr) === current;
      el.hidden = !on;
      if (el.tagName === "FIELDSET") el.disabled = !on;
      else el.querySelectorAll("input, select, textarea").forEach((i) => { i.disabled = !on; });
    });
  }

  // --- group tasks: reboot, restore configuration, upgrade (the original's dialog) ---------
  const TITLES = { reboot: t("Group reboot"), restore: t("Restore configuration"), upgrade: t("Group upgrade") };
  const DESCRIPTIONS = { reboot: "Group reboot", restore: "Restore configuration", upgrade: "Group upgrade" };

  function policyOf(form) {
    const policy = checked(form, "policy") || "none";
    const out = { policy, retryTimes: 0, at: null };
    if (policy === "retry") out.retryTimes = int(form, "retryTimes", t("retry times"), 1, 100);
    if (policy === "schedule") {
      if (!value(form, "at")) throw new Error(t("choose when the task starts"));
      out.at = localToIso(value(form, "at"));
    }
    return out;
  }
  function groupTaskError(form, message) {
    const box = form.querySelector("[data-gt-error]");
    box.textContent = message || "";
    box.hidden = !message;
  }
  function upgradeBody(form, dryRun) {
    const p = policyOf(form);
    const select = field(form, "firmwareId");
    if (!select || !select.value) throw new Error(t("the firmware catalogue is empty: add an image first"));
    const version = select.selectedOptions[0].dataset.version;
    const body = {
      name: t("Group upgrade of {group} to {version}", { group: value(form, "groupName"), version }),
      target: { groupId: Number(value(form, "groupId")) },
      firmwareId: Number(select.value),
      retryTimes: p.retryTimes,
      meta: { description: DESCRIPTIONS.upgrade },
    };
    if (p.at) body.scheduledAt = p.at;
    if (dryRun) body.dryRun = true;
    return body;
  }
  async function previewUpgrade(form) {
    const out = form.querySelector("[data-gt-preview]");
    if (!out) return;
    out.textContent = t("Counting the gateways it fits…");
    try {
      const plan = await api("POST", "/api/v1/rollouts", upgradeBody(form, true));
      out.textContent = tn("Reaches {n} gateway of the group", "Reaches {n} gateways of the group", plan.total) +
        (plan.skipped ? "; " + tn("{n} left out: the image does not list its model.", "{n} left out: the image does not list their model.", plan.skipped) : ".");
    } catch (e) { out.textContent = e.message; }
  }
  function openGroupTask(button) {
    const dialog = document.getElementById("group-task-dialog");
    if (!dialog) return;
    const form = dialog.querySelector("form");
    const mode = button.dataset.groupAction;
    form.reset();
    groupTaskError(form, "");
    field(form, "groupId").value = button.dataset.groupId;
    field(form, "groupName").value = button.dataset.groupName;
    field(form, "mode").value = mode;
    dialog.querySelector("[data-gt-title]").textContent = TITLES[mode] + ": " + button.dataset.groupName;
    showFor(form, "data-gt-for", mode);
    showFor(form, "data-gt-policy", "none");
    dialog.showModal();
    if (mode === "upgrade") previewUpgrade(form);
  }
  async function sendGroupTask(form) {
    const mode = value(form, "mode");
    const p = policyOf(form);
    if (mode === "upgrade") {
      const task = await api("POST", "/api/v1/rollouts", upgradeBody(form, false));
      return task.uuid;
    }
    let payload = { method: "post", resource: "/system/reboot" };
    if (mode === "restore") {
      const url = value(form, "url");
      if (!/^https?:\/\/\S+$/.test(url)) throw new Error(t("give the configuration file's http(s) URL"));
      const scopes = [...form.querySelectorAll('input[name="scopes"]:checked')].map((c) => c.value);
      if (!scopes.length) throw new Error(t("select at least one scope"));
      payload = { method: "put", resource: "/system/import", data: { file: { url }, scopes } };
    }
    const body = {
      groupId: Number(value(form, "groupId")), payload,
      applyPolicy: p.policy, retryTimes: p.retryTimes, meta: { description: DESCRIPTIONS[mode] },
    };
    if (p.at) body.scheduledDateTime = p.at;
    const group = await api("POST", "/api/v1/groupTasks", body);
    return group.taskUUID;
  }

  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("[data-group-action]");
    if (b) openGroupTask(b);
  });
  document.addEventListener("change", (ev) => {
    const form = ev.target.closest("[data-group-task-form]");
    if (!form) return;
    if (ev.target.name === "policy") showFor(form, "data-gt-policy", ev.target.value);
    if (ev.target.name === "firmwareId") previewUpgrade(form);
  });

  // --- group members ----------------------------------------------------------------------
  async function addToGroup(groupId, uuids) {
    await api("POST", "/api/v1/groups/" + groupId + "/devices", uuids);
  }
  // every gateway of a fleet query without a group (the API pages by 1,000; one call adds
  // 10,000 at most)
  async function freeGatewaysOf(query) {
    const free = [];
    let offset = 0;
    let total = Infinity;
    while (offset < total && free.length < 10000) {
      const page = await api("GET", "/api/v1/devices?limit=1000&offset=" + offset + "&q=" + encodeURIComponent(query));
      total = page.count;
      if (!page.data.length) break;
      page.data.forEach((d) => { if (d.groupId === null || d.groupId === undefined) free.push(d.uuid); });
      offset += page.data.length;
    }
    return free.slice(0, 10000);
  }

  // buttons whose call has a JSON body htmx cannot send (an array): data-api-json="<path>"
  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("[data-api-json], [data-add-query]");
    if (!b) return;
    if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) return;
    b.disabled = true;
    try {
      if (b.matches("[data-add-query]")) {
        const uuids = await freeGatewaysOf(b.dataset.addQuery);
        if (!uuids.length) { say(b, t("Nothing to add: every matching gateway is in a group"), "error"); return; }
        await addToGroup(b.dataset.groupId, uuids);
        flash(tn("{n} gateway added", "{n} gateways added", uuids.length), "ok");
        document.getElementById("candidates").textContent = "";
      } else {
        await api(b.dataset.method || "POST", b.dataset.apiJson, JSON.parse(b.dataset.body || "null"));
        flash(b.dataset.done || t("Done"), "ok");
      }
      refresh();
    } catch (e) {
      say(b, e.message, "error");
    } finally {
      b.disabled = false;
    }
  });

  // --- rollouts ---------------------------------------------------------------------------
  function rolloutBody(form, dryRun) {
    const body = { name: value(form, "rname"), target: {} };
    const target = checked(form, "targetKind");
    if (target === "group") {
      if (!value(form, "groupId")) throw new Error(t("create a group first, or choose another target"));
      body.target.groupId = Number(value(form, "groupId"));
    } else if (target === "query") {
      if (!value(form, "query")) throw new Error(t("write the fleet query"));
      body.target.query = value(form, "query");
    } else {
      const uuids = uuidList(value(form, "devices"));
      if (!uuids.length) throw new Error(t("paste at least one gateway uuid"));
      body.target.devices = uuids;
    }
    if (checked(form, "what") === "firmware") {
      body.firmwareId = Number(value(form, "firmwareId"));
    } else {
      const resource = value(form, "resource");
      if (!resource.startsWith("/")) throw new Error(t("the resource is a path such as /system/reboot"));
      body.payload = { method: value(form, "method"), resource };
      const data = value(form, "data");
      if (data) {
        try { body.payload.data = JSON.parse(data); } catch (e) { throw new Error(t("data is not JSON: {error}", { error: e.message })); }
      }
    }
    const waves = value(form, "waves");
    if (waves) {
      body.waves = waves.split(",").map((w) => w.trim()).filter(Boolean).map((w) => {
        if (/^\d+(\.\d+)?%$/.test(w)) return w;
        if (/^\d+$/.test(w)) return Number(w);
        throw new Error(t("a wave is a count (10) or a percentage (25%), not {value}", { value: JSON.stringify(w) }));
      });
    }
    body.successThreshold = int(form, "successThreshold", t("success threshold"), 0, 100);
    if (value(form, "errorThreshold")) body.errorThreshold = int(form, "errorThreshold", t("error threshold"), 0, 100);
    if (value(form, "maxPerMinute")) body.maxPerMinute = int(form, "maxPerMinute", t("starts a minute"), 1, 1000000);
    body.retryTimes = int(form, "retryTimes", t("retries"), 0, 100);
    if (value(form, "scheduledAt")) body.scheduledAt = localToIso(value(form, "scheduledAt"));
    if (field(form, "windowOn").checked) {
      const days = [...form.querySelectorAll('input[name="days"]:checked')].map((c) => c.value);
      if (!days.length) throw new Error(t("the window needs at least one day"));
      body.window = { timezone: value(form, "timezone") || "UTC", days, start: value(form, "start"), end: value(form, "end") };
    }
    if (dryRun) body.dryRun = true;
    return body;
  }
  function showPlan(plan) {
    const out = document.getElementById("rollout-preview");
    out.replaceChildren();
    const p = document.createElement("p");
    p.dataset.total = plan.total;
    p.dataset.skipped = plan.skipped;
    if (!plan.total) {
      p.className = "error";
      p.textContent = plan.skipped
        ? tn("This rollout would reach no gateway: the image fits none of the {n} gateway of the target.",
          "This rollout would reach no gateway: the image fits none of the {n} gateways of the target.", plan.skipped)
        : t("This rollout would reach no gateway: the target is empty.");
    } else {
      const sizes = plan.waves.map((w) => w.size).join(", ");
      p.textContent = tn("Reaches {n} gateway", "Reaches {n} gateways", plan.total) + " " +
        tn("in {n} wave", "in {n} waves", plan.waves.length) + " (" + sizes + ")" +
        (plan.skipped ? "; " + tn("{n} left out: the image does not list its model.", "{n} left out: the image does not list their model.", plan.skipped) : ".");
    }
    out.append(p);
  }
  async function previewRollout(form) {
    const plan = await api("POST", "/api/v1/rollouts", rolloutBody(form, true));
    showPlan(plan);
    return plan;
  }
  // [data-show-for="<radio name>:<value>"] sections follow their radio group
  function rolloutToggles(form) {
    form.querySelectorAll("[data-show-for]").forEach((el) => {
      const [name, wanted] = el.dataset.showFor.split(":");
      const on = checked(form, name) === wanted;
      el.hidden = !on;
      el.querySelectorAll("input, select, textarea").forEach((i) => { i.disabled = !on; });
    });
  }
  document.addEventListener("change", (ev) => {
    const form = ev.target.closest("[data-rollout-form]");
    if (form && (ev.target.name === "targetKind" || ev.target.name === "what")) rolloutToggles(form);
  });
  document.addEventListener("click", async (ev) => {
    const b = ev.target.closest("[data-rollout-preview]");
    if (!b) return;
    try { await previewRollout(b.form); } catch (e) { say(b, e.message, "error"); }
  });

  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (form.matches("[data-group-task-form]")) {
      ev.preventDefault();
      const submit = form.querySelector('[type="submit"]');
      submit.disabled = true;
      try {
        await sendGroupTask(form);
        form.closest("dialog").close();
        flash(t("{task} task created", { task: TITLES[value(form, "mode")] }), "ok");
        refresh();
      } catch (e) {
        groupTaskError(form, e.message);
      } finally {
        submit.disabled = false;
      }
    } else if (form.matches("[data-rollout-form]")) {
      ev.preventDefault();
      try {
        const plan = await previewRollout(form);
        if (!plan.total) return;
        if (!window.confirm(tn("Create the rollout for {n} gateway?", "Create the rollout for {n} gateways?", plan.total))) return;
        const task = await api("POST", "/api/v1/rollouts", rolloutBody(form, false));
        location.href = "/console/tasks/" + task.uuid;
      } catch (e) { say(form.querySelector('[type="submit"]'), e.message, "error"); }
    } else if (form.matches("[data-add-uuids]")) {
      ev.preventDefault();
      const uuids = uuidList(value(form, "uuids"));
      if (!uuids.length) { say(form, t("Paste at least one gateway uuid"), "error"); return; }
      try {
        await addToGroup(form.dataset.groupId, uuids);
        say(form, tn("{n} gateway added", "{n} gateways added", uuids.length), "ok");
        form.reset();
        refresh();
      } catch (e) { say(form, e.message, "error"); }
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-rollout-form]").forEach(rolloutToggles);
    document.querySelectorAll("[data-default-timezone]").forEach((input) => {
      try { input.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) { /* UTC */ }
    });
  });
})();
