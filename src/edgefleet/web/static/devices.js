// edgefleet console, the gateway list (templates/devices.html): its state, selection and bulk
// actions. The state (query, sort, page, page size) is kept here and in the address; the rows
// are a fragment reloaded for that state, by the user or by the live stream, and the selection
// survives every reload, page and sort: it is a set of uuids kept here, and the boxes are
// checked again after each swap. Changing the query clears the selection.
//
// A bulk action shows its exact targets (count and names) and sends them with the query they
// were selected from; the server refuses (409) when they no longer match it, or, for "every
// gateway that matches", when the query now matches others too.
(function () {
  "use strict";
  const { api, say, t, tn } = window.edgefleet;
  const list = () => document.getElementById("device-list");
  const MAX = 10000;  // the API takes at most this many uuids a call

  const state = JSON.parse(list().dataset.state);
  const selection = new Map();  // uuid → name, in the order chosen
  let selectionQuery = state.q;  // the query the selection was made from
  let exact = false;  // "every gateway that matches" was chosen
  let total = 0;

  function params() { return { q: state.q, sort: state.sort, page: state.page, size: state.size }; }
  window.edgefleet.devices = { params, state, selection };

  function address() {
    const p = new URLSearchParams();
    if (state.q) p.set("q", state.q);
    if (state.sort !== "created") p.set("sort", state.sort);
    if (state.page !== 1) p.set("page", String(state.page));
    if (state.size !== 50) p.set("size", String(state.size));
    const query = p.toString();
    return location.pathname + (query ? "?" + query : "");
  }
  function load(push) {
    const url = address();
    if (url !== location.pathname + location.search) {
      if (push) history.pushState(params(), "", url);
      else history.replaceState(params(), "", url);
    }
    htmx.trigger(list(), "list-state");
  }
  window.addEventListener("popstate", () => {
    const p = new URLSearchParams(location.search);
    const q = p.get("q") || "";
    if (q !== state.q) clearSelection();
    Object.assign(state, {
      q, sort: p.get("sort") || "created", page: Number(p.get("page")) || 1, size: Number(p.get("size")) || 50,
    });
    const box = document.getElementById("q");
    if (box) box.value = state.q;
    htmx.trigger(list(), "list-state");
  });

  // --- the selection --------------------------------------------------------------------------
  function clearSelection() {
    selection.clear();
    exact = false;
    selectionQuery = state.q;
    showSelection();
  }
  function rows() { return [...list().querySelectorAll("tr[data-device]")]; }
  function showSelection() {
    const bar = document.querySelector("[data-selection-bar]");
    rows().forEach((tr) => {
      const box = tr.querySelector("[data-select]");
      if (box) box.checked = selection.has(tr.dataset.device);
    });
    const pageBox = list().querySelector("[data-select-page]");
    const onPage = rows();
    const chosenHere = onPage.filter((tr) => selection.has(tr.dataset.device)).length;
    if (pageBox) {
      pageBox.checked = onPage.length > 0 && chosenHere === onPage.length;
      pageBox.indeterminate = chosenHere > 0 && chosenHere < onPage.length;
    }
    if (!bar) return;
    bar.hidden = selection.size === 0;
    bar.querySelector("[data-selection-count]").textContent = exact
      ? tn("Every gateway that matches: {n} selected", "Every gateway that matches: {n} selected", selection.size)
      : tn("{n} gateway selected", "{n} gateways selected", selection.size);
    const note = bar.querySelector("[data-selection-note]");
    note.textContent = "";
    if (exact && total !== selection.size && state.q === selectionQuery) {
      note.textContent = tn("(the query now matches {n} gateway: select again before acting)",
        "(the query now matches {n} gateways: select again before acting)", total);
    } else if (selection.size > chosenHere) {
      note.textContent = tn("({n} not on this page)", "({n} not on this page)", selection.size - chosenHere);
    }
    const more = bar.querySelector("[data-select-matching]");
    const allHere = onPage.length > 0 && chosenHere === onPage.length;
    more.hidden = exact || !allHere || total <= onPage.length || total > MAX;
    more.textContent = tn("Select every gateway that matches ({n})", "Select every gateway that matches ({n})", total);
  }
  document.addEventListener("change", (ev) => {
    const box = ev.target;
    if (!list() || !list().contains(box)) return;
    if (box.matches("[data-select]")) {
      const tr = box.closest("tr");
      if (box.checked) selection.set(tr.dataset.device, tr.dataset.name);
      else { selection.delete(tr.dataset.device); exact = false; }
      selectionQuery = state.q;
      showSelection();
    } else if (box.matches("[data-select-page]")) {
      rows().forEach((tr) => {
        if (box.checked) selection.set(tr.dataset.device, tr.dataset.name);
        else { selection.delete(tr.dataset.device); exact = false; }
      });
      selectionQuery = state.q;
      showSelection();
    } else if (box.matches("[data-page-size]")) {
      state.size = Number(box.value);
      state.page = 1;
      load(true);
    }
  });
  // every gateway of the query (through the API, 1,000 a page)
  async function selectMatching(button) {
    button.disabled = true;
    try {
      const found = new Map();
      let offset = 0;
      let count = Infinity;
      while (offset < count && found.size <= MAX) {
        const page = await api("GET", "/api/v1/devices?limit=1000&sort=" + encodeURIComponent(state.sort)
          + "&offset=" + offset + (state.q ? "&q=" + encodeURIComponent(state.q) : ""));
        count = page.count;
        if (!page.data.length) break;
        page.data.forEach((d) => found.set(d.uuid, d.displayName || d.uuid));
        offset += page.data.length;
      }
      if (found.size > MAX) throw new Error(tn("more than {n} gateway match: narrow the query", "more than {n} gateways match: narrow the query", MAX));
      selection.clear();
      found.forEach((name, uuid) => selection.set(uuid, name));
      exact = true;
      selectionQuery = state.q;
      total = count;
      showSelection();
    } catch (e) { say(button, e.message, "error"); }
    finally { button.disabled = false; }
  }

  // --- searching, sorting, paging -------------------------------------------------------------
  document.addEventListener("submit", (ev) => {
    const form = ev.target;
    if (!form.matches("[data-device-search]")) return;
    ev.preventDefault();
    const q = form.q.value.trim();
    if (q !== state.q) clearSelection();
    state.q = q;
    state.page = 1;
    form.querySelector("[data-search-reset]").hidden = !q;
    selectionQuery = q;
    load(true);
  });
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("[data-sort], [data-page-to], [data-search-reset], [data-select-matching], [data-clear-selection]");
    if (!b) return;
    if (b.matches("[data-sort]")) {
      const key = b.dataset.sort;
      state.sort = state.sort === key ? "-" + key : key;
      state.page = 1;
      load(true);
    } else if (b.matches("[data-page-to]")) {
      state.page = Math.max(1, Number(b.dataset.pageTo));
      load(true);
    } else if (b.matches("[data-search-reset]")) {
      const form = b.form;
      form.q.value = "";
      form.requestSubmit();
    } else if (b.matches("[data-select-matching]")) {
      selectMatching(b);
    } else if (b.matches("[data-clear-selection]")) {
      clearSelection();
    }
  });
  document.addEventListener("htmx:afterSwap", (ev) => {
    if (ev.detail.target !== list()) return;
    const rowsBox = list().querySelector("[data-total]");
    total = rowsBox ? Number(rowsBox.dataset.total) : 0;
    const pages = rowsBox ? Number(rowsBox.dataset.pages) : 1;
    if (state.page > pages && total > 0) { state.page = pages; load(false); return; }
    showSelection();
  });

  // --- bulk actions ---------------------------------------------------------------------------
  const TITLES = {
    reboot: () => tn("Reboot {n} gateway", "Reboot {n} gateways", selection.size),
    group: () => tn("Add {n} gateway to a group", "Add {n} gateways to a group", selection.size),
    tags: () => tn("Change the tags of {n} gateway", "Change the tags of {n} gateways", selection.size),
    attribute: () => tn("Set an attribute of {n} gateway", "Set an attribute of {n} gateways", selection.size),
    description: () => tn("Describe {n} gateway", "Describe {n} gateways", selection.size),
    delete: () => tn("Delete {n} gateway", "Delete {n} gateways", selection.size),
  };
  const CONFIRM = {
    reboot: () => t("Reboot them"), group: () => t("Add them"), tags: () => t("Change the tags"),
    attribute: () => t("Set the attribute"), description: () => t("Set the description"),
    delete: () => t("Delete them"),
  };
  function openBulk(kind) {
    const dialog = document.getElementById("bulk-dialog");
    const form = dialog.querySelector("form");
    form.reset();
    form.dataset.kind = kind;
    form.querySelectorAll("[data-bulk-for]").forEach((el) => {
      const on = el.dataset.bulkFor === kind;
      el.hidden = !on;
      el.querySelectorAll("input, select").forEach((i) => { i.disabled = !on; });
    });
    dialog.querySelector("[data-bulk-title]").textContent = TITLES[kind]();
    dialog.querySelector("[data-bulk-scope]").textContent = selectionQuery
      ? (exact ? t("Every gateway that matches the query {query}", { query: selectionQuery })
        : t("Selected from the list of the query {query}", { query: selectionQuery }))
      : (exact ? t("Every gateway") : t("Selected from the list of every gateway"));
    dialog.querySelector("[data-bulk-count]").textContent = tn("{n} gateway:", "{n} gateways:", selection.size);
    const targets = dialog.querySelector("[data-bulk-targets]");
    targets.replaceChildren();
    let shown = 0;
    for (const [uuid, name] of selection) {
      if (shown++ >= 500) {
        const li = document.createElement("li");
        li.className = "muted";
        li.textContent = tn("and {n} more", "and {n} more", selection.size - 500);
        targets.append(li);
        break;
      }
      const li = document.createElement("li");
      li.dataset.target = uuid;
      li.textContent = name;
      targets.append(li);
    }
    const confirm = dialog.querySelector("[data-bulk-confirm]");
    confirm.textContent = CONFIRM[kind]();
    confirm.className = kind === "delete" ? "danger" : "";
    const error = dialog.querySelector("[data-bulk-error]");
    error.hidden = true;
    error.textContent = "";
    dialog.showModal();
  }
  function words(text) { return text.split(/[\s,;]+/).filter(Boolean); }
  async function runBulk(form) {
    const kind = form.dataset.kind;
    const devices = [...selection.keys()];
    const guard = selectionQuery;  // the list they were picked from
    const q = "?q=" + encodeURIComponent(guard) + (exact ? "&exact=true" : "");
    if (kind === "reboot") {
      const task = await api("POST", "/api/v1/rollouts", {
        name: tn("Reboot of {n} gateway", "Reboot of {n} gateways", devices.length),
        target: { devices, query: guard, exact },
        payload: { method: "post", resource: "/system/reboot" },
        meta: { description: "Reboot" },
      });
      location.href = "/console/tasks/" + task.uuid;
      return null;
    }
    if (kind === "group") {
      if (!form.group || !form.group.value) throw new Error(t("Create a group first"));
      await api("POST", "/api/v1/groups/" + encodeURIComponent(form.group.value) + "/devices" + q, devices);
      return tn("{n} gateway added to the group", "{n} gateways added to the group", devices.length);
    }
    if (kind === "tags") {
      const addTags = words(form.addTags.value);
      const removeTags = words(form.removeTags.value);
      if (!addTags.length && !removeTags.length) throw new Error(t("Give the tags to add or to remove"));
      await api("PATCH", "/api/v1/devices", { devices, query: guard, exact, addTags, removeTags });
      return tn("Tags of {n} gateway changed", "Tags of {n} gateways changed", devices.length);
    }
    if (kind === "attribute") {
      const key = form.key.value.trim();
      if (!key) throw new Error(t("Give the attribute's name"));
      const value = form.value.value;
      await api("PATCH", "/api/v1/devices", { devices, query: guard, exact, attributes: { [key]: value === "" ? null : value } });
      return tn("Attribute of {n} gateway set", "Attribute of {n} gateways set", devices.length);
    }
    if (kind === "description") {
      await api("PATCH", "/api/v1/devices", { devices, query: guard, exact, description: form.description.value });
      return tn("Description of {n} gateway set", "Description of {n} gateways set", devices.length);
    }
    if (kind === "delete") {
      await api("DELETE", "/api/v1/devices" + q, devices);
      clearSelection();
      return tn("{n} gateway deleted", "{n} gateways deleted", devices.length);
    }
    return null;
  }
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("[data-bulk]");
    if (!b) return;
    if (!selection.size) { say(b, t("Select gateways first"), "error"); return; }
    openBulk(b.dataset.bulk);
  });
  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!form.matches("[data-bulk-form]")) return;
    ev.preventDefault();
    const confirm = form.querySelector("[data-bulk-confirm]");
    const error = form.querySelector("[data-bulk-error]");
    confirm.disabled = true;
    try {
      const done = await runBulk(form);
      if (done === null) return;
      form.closest("dialog").close();
      if (selection.size) say(document.querySelector("[data-selection-bar] .btn-row"), done, "ok");
      else window.edgefleet.flash(done, "ok");
      window.edgefleet.refresh();
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    } finally {
      confirm.disabled = false;
    }
  });
})();
