"use strict";
// The search page. Every value from the API goes into the page through textContent or
// attributes of elements made here (captions and URLs are untrusted web text); links are
// made only for http(s) URLs; the CSP forbids inline script, so this file is the only code.
const $ = (id) => document.getElementById(id);
const state = { page: 0, imageFile: null, health: null };

function fmt(v) {
  return (v === null || v === undefined) ? "–" : Number(v).toFixed(3);
}

function safeLink(url) {
  // the API sends `link` only for http(s) URLs; check again here, a link is never made otherwise
  if (typeof url !== "string") return null;
  try {
    const u = new URL(url);
    return (u.protocol === "http:" || u.protocol === "https:") ? u.href : null;
  } catch (e) {
    return null;
  }
}

function card(r) {
  const div = document.createElement("div");
  div.className = "card result";
  div.dataset.sampleId = r.sample_id;
  div.dataset.faissId = r.faiss_id;
  const img = document.createElement("img");
  img.alt = r.caption || "";
  img.loading = "lazy";
  img.src = "/image/" + encodeURIComponent(r.sample_id);
  img.addEventListener("error", () => { img.style.visibility = "hidden"; });
  img.addEventListener("click", () => enlarge(r));
  const cap = document.createElement("div");
  cap.className = "caption";
  cap.textContent = r.caption || "(no caption)";
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = "score " + fmt(r.score) + " · clip sim " + fmt(r.similarity) +
    " · punsafe " + fmt(r.punsafe) + " · pwatermark " + fmt(r.pwatermark) +
    " · aesthetic " + fmt(r.aesthetic) + " · " + (r.language || "?") + " ";
  const href = safeLink(r.link);
  if (href) {
    const a = document.createElement("a");
    a.href = href; a.textContent = "source"; a.rel = "noopener noreferrer nofollow"; a.target = "_blank";
    meta.appendChild(a);
  }
  div.append(img, cap, meta);
  return div;
}

function enlarge(r) {
  $("lightbox-img").src = "/image/" + encodeURIComponent(r.sample_id);
  $("lightbox-caption").textContent = r.caption || "";
  $("lightbox").hidden = false;
}

function closeLightbox() {
  $("lightbox").hidden = true;
  $("lightbox-img").removeAttribute("src");
}

function params() {
  return {
    q: $("q").value.trim(),
    k: $("k").value || "20",
    safe: $("safe").checked ? "true" : "false",
    dedup: $("dedup").checked ? "true" : "false",
    lang: $("lang").value,
  };
}

function saveUrlState(p) {
  // shareable: q, k, safe, lang (+ dedup, page); an image query cannot live in a URL
  const u = new URLSearchParams();
  if (p.q && !state.imageFile) u.set("q", p.q);
  u.set("k", p.k);
  u.set("safe", p.safe);
  if (p.lang) u.set("lang", p.lang);
  if (p.dedup === "false") u.set("dedup", "false");
  if (state.page) u.set("page", String(state.page));
  history.replaceState(null, "", "?" + u.toString());
}

function restoreUrlState() {
  const u = new URLSearchParams(location.search);
  if (u.has("q")) $("q").value = u.get("q");
  if (u.has("k")) $("k").value = u.get("k");
  if (u.has("safe")) $("safe").checked = u.get("safe") !== "false" && u.get("safe") !== "0";
  if (u.has("dedup")) $("dedup").checked = u.get("dedup") !== "false" && u.get("dedup") !== "0";
  if (u.has("lang")) {
    const lang = u.get("lang");
    if (![...$("lang").options].some((o) => o.value === lang)) {
      const o = document.createElement("option");
      o.value = lang; o.textContent = lang;
      $("lang").appendChild(o);
    }
    $("lang").value = lang;
  }
  state.page = Math.max(0, parseInt(u.get("page") || "0", 10) || 0);
  return u.has("q");
}

function showError(data, status) {
  let msg = (data && data.error) || ("HTTP " + status);
  if (data && Array.isArray(data.detail) && data.detail.length) {
    msg += ": " + data.detail.map((d) => (d.loc || []).join(".") + " " + d.msg).join("; ");
  }
  $("status").textContent = "error: " + msg;
}

async function run(keepPage) {
  if (!keepPage) state.page = 0;
  const p = params();
  const qs = new URLSearchParams({ k: p.k, safe: p.safe, dedup: p.dedup, page: String(state.page) });
  if (p.lang) qs.set("lang", p.lang);
  let resp;
  $("status").textContent = "searching…";
  try {
    if (state.imageFile) {
      resp = await fetch("/search?" + qs.toString(), { method: "POST",
        headers: { "Content-Type": state.imageFile.type || "application/octet-stream" }, body: state.imageFile });
    } else {
      if (!p.q) { $("status").textContent = "type a query"; return; }
      qs.set("q", p.q);
      resp = await fetch("/search?" + qs.toString());
    }
    const data = await resp.json();
    const box = $("results");
    box.replaceChildren();
    if (!resp.ok) { showError(data, resp.status); return; }
    data.results.forEach((r) => box.appendChild(card(r)));
    $("status").textContent = data.results.length + " results";
    $("page-info").textContent = "page " + (state.page + 1);
    $("prev").disabled = state.page === 0;
    $("next").disabled = !data.has_more;
    saveUrlState(p);
  } catch (e) {
    $("status").textContent = "error: " + e;
  }
}

function setImage(file) {
  state.imageFile = file || null;
  const prev = $("file-preview");
  if (prev.src) URL.revokeObjectURL(prev.src);
  if (file) {
    prev.src = URL.createObjectURL(file);
    prev.hidden = false;
    $("clear-image").hidden = false;
  } else {
    prev.removeAttribute("src");
    prev.hidden = true;
    $("clear-image").hidden = true;
    $("file").value = "";
  }
}

function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function makeSubset() {
  const p = params();
  const mode = $("subset-mode").value;
  const value = Number($("subset-value").value);
  const body = { name: $("subset-name").value.trim(), mode: mode, safe: p.safe === "true" };
  if (p.lang) body.lang = p.lang;
  if (mode === "top") body.top_n = Math.round(value); else body.min_score = value;
  if (state.imageFile) body.image_b64 = await fileBase64(state.imageFile);
  else body.text = p.q;
  $("subset-status").textContent = "writing…";
  try {
    const resp = await fetch("/subsets", { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const data = await resp.json();
    if (!resp.ok) {
      let msg = data.error || ("HTTP " + resp.status);
      if (Array.isArray(data.detail)) msg += ": " + data.detail.map((d) => (d.loc || []).join(".") + " " + d.msg).join("; ");
      $("subset-status").textContent = "error: " + msg;
      return;
    }
    $("subset-status").textContent = "subset " + data.subset + ": " + data.rows + " samples";
  } catch (e) {
    $("subset-status").textContent = "error: " + e;
  }
}

async function loadHealth() {
  try {
    const resp = await fetch("/health");
    const h = await resp.json();
    state.health = h;
    const sel = $("lang");
    (h.languages || []).forEach((l) => {
      const o = document.createElement("option");
      o.value = l; o.textContent = l;
      sel.appendChild(o);
    });
    $("nsfw-notice").hidden = !!h.nsfw_scores;
    if (h.report) $("report-link").hidden = false;
    if (h.max_k) $("k").max = String(h.max_k);
    $("subset-form").hidden = !h.subsets;
  } catch (e) {
    $("status").textContent = "cannot reach the service: " + e;
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("go").addEventListener("click", () => run(false));
  $("q").addEventListener("keydown", (e) => { if (e.key === "Enter") run(false); });
  $("file").addEventListener("change", () => setImage($("file").files[0]));
  $("clear-image").addEventListener("click", () => setImage(null));
  $("prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); run(true); });
  $("next").addEventListener("click", () => { state.page += 1; run(true); });
  $("lightbox-close").addEventListener("click", closeLightbox);
  $("lightbox").addEventListener("click", (e) => { if (e.target === $("lightbox")) closeLightbox(); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeLightbox(); });
  $("subset-mode").addEventListener("change", () => {
    $("subset-value").value = $("subset-mode").value === "top" ? "100" : "0.2";
  });
  $("subset-go").addEventListener("click", makeSubset);
  await loadHealth();
  if (restoreUrlState()) run(true);
});
