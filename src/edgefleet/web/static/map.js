// edgefleet console, the map (templates/devices/map.html): Leaflet with clustered markers
// coloured by state, tiles from the configured server (EDGEFLEET_CONSOLE__MAP_TILES_URL) and,
// when there are none or they do not load, the offline basemap shipped with the console
// (Natural Earth's country outlines, vendored TopoJSON). Markers are updated in place on each
// live refresh, so the view, the zoom and an open popup stay as the user left them.
(function () {
  "use strict";
  const { t, tn } = window.edgefleet;
  const box = document.getElementById("map-canvas");
  if (!box || !window.L) return;
  const note = document.querySelector("[data-map-note]");
  const summary = document.querySelector("[data-map-summary]");
  const STATES = ["online", "offline", "created"];
  const COLOURS = { online: "#1a7f37", offline: "#b42318", created: "#8a94a3" };
  const LABELS = { online: t("online"), offline: t("offline"), created: t("never connected") };

  // no zoom and cluster animations for those who asked their system for less motion
  const still = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  const map = L.map(box, {
    worldCopyJump: true, minZoom: 2, maxZoom: Number(box.dataset.maxZoom) || 18,
    zoomAnimation: !still, fadeAnimation: !still, markerZoomAnimation: !still,
  });
  map.setView([25, 10], 2);
  map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a>');

  // --- basemaps -------------------------------------------------------------------------------
  let basemap = null;
  function unwrapRing(ring) {
    for (let i = 1; i < ring.length; i += 1) {
      const step = ring[i][0] - ring[i - 1][0];
      if (step > 180) ring[i][0] -= 360;
      else if (step < -180) ring[i][0] += 360;
    }
  }
  function unwrap(geometry) {
    if (!geometry) return;
    if (geometry.type === "Polygon") geometry.coordinates.forEach(unwrapRing);
    else if (geometry.type === "MultiPolygon") geometry.coordinates.forEach((poly) => poly.forEach(unwrapRing));
  }
  async function offlineBasemap(reason) {
    note.textContent = reason;
    box.dataset.mode = "offline";
    if (basemap) return;
    basemap = true;
    try {
      const r = await fetch(box.dataset.basemap, { credentials: "same-origin" });
      const world = await r.json();
      const land = topojson.feature(world, world.objects.countries);
      // Antarctica (no gateway there) runs along the pole, which Web Mercator cannot draw;
      // rings crossing the antimeridian (Russia, Fiji) are unwrapped so that they do not
      // streak across the map
      land.features = land.features.filter((f) => f.id !== "010");
      land.features.forEach((f) => unwrap(f.geometry));
      basemap = L.geoJSON(land, {
        interactive: false,
        style: { color: "#8a9bb0", weight: 0.8, fillColor: "#f3f1ec", fillOpacity: 1 },
      }).addTo(map);
      basemap.bringToBack();
      box.dataset.basemapLoaded = "1";
      map.attributionControl.addAttribution(t("Country outlines: Natural Earth"));
    } catch (e) {
      basemap = null;
      note.textContent = t("The offline map could not be loaded: {error}", { error: e.message });
    }
  }
  const tilesUrl = box.dataset.tiles;
  if (!tilesUrl) {
    offlineBasemap(t("No tile server is configured: showing the offline map (country outlines)."));
  } else {
    const tiles = L.tileLayer(tilesUrl, {
      attribution: box.dataset.attribution, maxZoom: Number(box.dataset.maxZoom) || 19,
    });
    let loaded = 0;
    let failed = 0;
    tiles.on("tileload", () => { loaded += 1; box.dataset.mode = "tiles"; });
    tiles.on("tileerror", () => {
      failed += 1;
      if (!loaded && failed >= 2) {
        map.removeLayer(tiles);
        let host = tilesUrl;
        try { host = new URL(tilesUrl.replace(/\{[a-z]\}/g, "0")).host; } catch (e) { /* as it is */ }
        offlineBasemap(t("The map tiles could not be loaded from {host}: showing the offline map (country outlines).", { host }));
      }
    });
    tiles.addTo(map);
  }

  // --- markers --------------------------------------------------------------------------------
  function dotIcon(status) {
    return L.divIcon({ className: "", html: '<span class="dot ' + status + '"></span>', iconSize: [16, 16], iconAnchor: [8, 8] });
  }
  // a cluster: a ring in the states' shares around the count
  function clusterIcon(cluster) {
    const counts = { online: 0, offline: 0, created: 0 };
    cluster.getAllChildMarkers().forEach((m) => { counts[m.options.status] = (counts[m.options.status] || 0) + 1; });
    const n = cluster.getChildCount();
    let at = 0;
    const stops = STATES.filter((s) => counts[s]).map((s) => {
      const from = at; at += (100 * counts[s]) / n;
      return COLOURS[s] + " " + from.toFixed(1) + "% " + at.toFixed(1) + "%";
    });
    const size = n < 10 ? 34 : n < 100 ? 40 : 48;
    const title = STATES.filter((s) => counts[s]).map((s) => counts[s] + " " + LABELS[s]).join(", ");
    const html = '<div class="cluster" title="' + title + '" data-online="' + counts.online + '" data-offline="' + counts.offline +
      '" style="width:' + size + 'px;height:' + size + 'px;background:conic-gradient(' + stops.join(",") + ')">' +
      '<span style="background:#14253a;border-radius:50%;padding:3px 5px">' + n + "</span></div>";
    return L.divIcon({ html, className: "", iconSize: [size, size] });
  }
  const clusters = L.markerClusterGroup({
    iconCreateFunction: clusterIcon, showCoverageOnHover: false, maxClusterRadius: 50, animate: !still,
  });
  map.addLayer(clusters);
  const markers = new Map();  // uuid → marker

  function popupFor(p) {
    const div = document.createElement("div");
    const a = document.createElement("a");
    a.href = "/console/devices/" + encodeURIComponent(p.uuid);
    a.textContent = p.name;
    const state = document.createElement("span");
    state.className = "state " + p.status;
    state.textContent = " " + (LABELS[p.status] || p.status);
    const more = document.createElement("div");
    more.className = "muted";
    more.textContent = (p.model ? p.model + " · " : "") + p.lat.toFixed(4) + ", " + p.lng.toFixed(4);
    div.append(a, state, more);
    return div;
  }
  let first = true;
  async function load() {
    let data;
    try {
      const r = await fetch(box.dataset.points, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (r.status === 401) { location.href = "/console/login?next=/console/map"; return; }
      data = await r.json();
    } catch (e) { return; }
    const seen = new Set();
    const added = [];
    const changed = [];
    data.points.forEach((p) => {
      seen.add(p.uuid);
      const old = markers.get(p.uuid);
      if (!old) {
        const m = L.marker([p.lat, p.lng], { icon: dotIcon(p.status), status: p.status, title: p.name, alt: p.name });
        m.bindPopup(() => popupFor(m.options.point));
        m.options.point = p;
        markers.set(p.uuid, m);
        added.push(m);
        return;
      }
      const moved = old.getLatLng().lat !== p.lat || old.getLatLng().lng !== p.lng;
      if (old.options.status !== p.status || moved) {
        old.options.status = p.status;
        old.setIcon(dotIcon(p.status));
        if (moved) old.setLatLng([p.lat, p.lng]);
        changed.push(old);
      }
      old.options.point = p;
      if (old.isPopupOpen()) old.setPopupContent(popupFor(p));
    });
    const gone = [...markers.entries()].filter(([uuid]) => !seen.has(uuid));
    gone.forEach(([uuid, m]) => { markers.delete(uuid); });
    if (gone.length) clusters.removeLayers(gone.map(([, m]) => m));
    if (added.length) clusters.addLayers(added);
    if (changed.length) clusters.refreshClusters(changed);
    box.dataset.markers = String(markers.size);
    summary.textContent = tn("{n} gateway on the map", "{n} gateways on the map", data.points.length) +
      (data.unplaced ? "; " + tn("{n} without a position", "{n} without a position", data.unplaced) : "") +
      (data.beyond ? "; " + tn("{n} more not drawn", "{n} more not drawn", data.beyond) : "") + ".";
    if (first) {
      first = false;
      const at = new URLSearchParams(location.search).get("at");
      const where = at ? at.split(",").map(Number) : null;
      if (where && where.length === 2 && where.every(Number.isFinite)) map.setView(where, 12);
      else if (data.points.length) map.fitBounds(L.latLngBounds(data.points.map((p) => [p.lat, p.lng])), { maxZoom: 6, padding: [30, 30] });
    }
  }
  load();
  document.body.addEventListener("refresh", load);
  window.edgefleet.map = map;
})();
