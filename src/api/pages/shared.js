// Shared by both pages (compiled into each, so each stays one file).
const $ = (id) => document.getElementById(id);
// The bearer token, in memory only: set when the user signs in.
let token = null;

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

// Calls this service's API with the token; `raw` answers the body's text.
async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    credentials: "omit",
    headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
  });
  if (options.raw && response.ok) return response.text();
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body.error ? body.error.message : "HTTP " + response.status);
  }
  return body;
}

function money(map) {
  const parts = Object.entries(map || {}).map(([currency, amount]) => amount + " " + currency);
  return parts.length ? parts.join(", ") : "–";
}

// The UTC day `offset` days ago, as YYYY-MM-DD.
function day(offset) {
  const d = new Date();
  d.setUTCDate(d.getUTCDate() - offset);
  return d.toISOString().slice(0, 10);
}

// Saves `text` as a file through a link the page makes.
function save(text, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], {type: "text/csv"}));
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
}
