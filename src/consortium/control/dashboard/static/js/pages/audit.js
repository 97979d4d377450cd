// Audit log: who did what, newest last, with the log's head to note outside the server.
// Admins only by default (the read-audit action); each read is itself recorded, so the
// page reads once and on "Refresh", never on a timer.

import { get } from "../api.js";
import { fill, h, note, table } from "../dom.js";

const FILTERS = ["actor", "action", "run_id"];

function row(entry) {
  const detail = Object.entries(entry.detail || {})
    .map(([key, value]) => `${key}=${typeof value === "string" ? value : JSON.stringify(value)}`)
    .join(" ");
  return h("tr", { dataset: { seq: String(entry.seq), action: entry.action, outcome: entry.outcome } },
    h("td", { class: "number" }, String(entry.seq)),
    h("td", {}, entry.time),
    h("td", {}, h("strong", {}, entry.actor), entry.role ? ` (${entry.role})` : ""),
    h("td", {}, entry.organisation || "—"),
    h("td", {}, h("code", {}, entry.action)),
    h("td", {}, h("span", { class: ["badge", `outcome-${entry.outcome}`] }, entry.outcome)),
    h("td", {}, entry.run_id ? h("a", { href: `#/runs/${encodeURIComponent(entry.run_id)}` }, entry.run_id) : ""),
    h("td", {}, entry.target || ""),
    h("td", { class: "detail" }, detail));
}

export async function render(main) {
  const inputs = Object.fromEntries(FILTERS.map((name) => [name,
    h("input", { id: `audit-${name}`, name, placeholder: name.replace("_", " "), spellcheck: "false" })]));
  const refresh = h("button", { type: "submit", id: "audit-refresh" }, "Refresh");
  const head = h("p", { class: "hint", id: "audit-head" });
  const body = h("div", { id: "audit" });
  const form = h("form", { class: "filters", id: "audit-filters" },
    ...FILTERS.map((name) => inputs[name]), refresh);
  fill(main, h("h1", {}, "Audit log"), form, head, body);

  async function load() {
    const query = new URLSearchParams({ limit: "200" });
    for (const name of FILTERS) {
      const value = inputs[name].value.trim();
      if (value) query.set(name, value);
    }
    try {
      const { entries, head: last } = await get(`/audit?${query}`);
      fill(head, "Head ", h("code", {}, last),
        ": note it outside the server; consortium audit verify --expect-head checks the log against it.");
      fill(body, entries.length
        ? table(["#", "Time (UTC)", "Who", "Organisation", "Action", "Outcome", "Run", "Target", "Detail"],
          entries.map(row), { class: "audit" })
        : note("info", "No entry matches."));
    } catch (error) {
      if (error.status === 403) {
        fill(head);
        fill(body, note("error", "Your token's role may not read the audit log (it needs read-audit: admins by default). ",
          error.message));
        return;
      }
      throw error;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load().catch((error) => fill(body, note("error", error.message)));
  });
  await load();
}
