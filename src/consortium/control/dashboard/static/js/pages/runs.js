// Runs: the newest runs with their status; pick two to compare.

import { get } from "../api.js";
import { badge, fill, h, note, table, when } from "../dom.js";

export const ACTIVE = ["pending", "running"];
const REFRESH_MS = 3000;

export async function render(main) {
  const list = h("div", { id: "runs" });
  const compare = h("button", { type: "button", id: "compare-selected", disabled: true }, "Compare the two selected");
  const chosen = new Set();

  compare.addEventListener("click", () => {
    const [a, b] = [...chosen];
    location.hash = `#/compare/${encodeURIComponent(a)}/${encodeURIComponent(b)}`;
  });

  function row(run) {
    const box = h("input", {
      type: "checkbox", "aria-label": `select run ${run.run_id}`, checked: chosen.has(run.run_id),
    });
    box.addEventListener("change", () => {
      if (box.checked) chosen.add(run.run_id);
      else chosen.delete(run.run_id);
      compare.disabled = chosen.size !== 2;
    });
    return h("tr", { dataset: { run: run.run_id, status: run.status } },
      h("td", {}, box),
      h("td", {}, h("a", { href: `#/runs/${encodeURIComponent(run.run_id)}` }, h("code", {}, run.run_id))),
      h("td", {}, run.app),
      h("td", {}, badge(run.status)),
      h("td", { class: "number" }, String(run.rounds_done)),
      h("td", {}, when(run.created)),
      h("td", {}, when(run.finished)),
      h("td", { class: "error-text" }, run.error || ""));
  }

  async function refresh() {
    const { runs } = await get("/runs");
    fill(list, runs.length
      ? table(["", "Run", "App", "Status", "Rounds", "Created", "Finished", "Error"], runs.map(row), { class: "runs" })
      : note("info", "No run yet: ", h("a", { href: "#/start" }, "start one"), "."));
  }

  fill(main,
    h("div", { class: "title-row" }, h("h1", {}, "Runs"),
      h("div", { class: "actions" }, compare, h("a", { class: "button", href: "#/start" }, "Start a run"))),
    list);
  await refresh();
  // refreshed, so a status changes without a reload
  const timer = setInterval(() => {
    refresh().catch(() => {});
  }, REFRESH_MS);
  return () => clearInterval(timer);
}
