// Two runs side by side: parameters (differences marked), final metrics, and the global
// metric of both over the rounds.

import { get } from "../api.js";
import { lineChart } from "../chart.js";
import { badge, fill, h, note, num, show } from "../dom.js";
import { globalKeys, nodeIds, part, preferredKey } from "../rounds.js";

async function load(runId) {
  const id = encodeURIComponent(runId);
  const [detail, metrics] = await Promise.all([get(`/runs/${id}`), get(`/runs/${id}/metrics`)]);
  return { detail, rounds: metrics.rounds };
}

function picker(runs, chosen, label) {
  return h("select", { "aria-label": label, class: "run-pick" },
    h("option", { value: "" }, "— pick a run —"),
    runs.map((r) => h("option", { value: r.run_id, selected: r.run_id === chosen },
      `${r.run_id} · ${r.app} · ${r.status}`)));
}

function rows(label, a, b, { className, format = show } = {}) {
  const [x, y] = [a, b].map((v) => (v === undefined || v === null ? "—" : format(v)));
  return h("tr", { class: [className, x !== y ? "diff" : null], dataset: { key: label } },
    h("th", { scope: "row" }, label), h("td", {}, x), h("td", {}, y));
}

function lastRound(run) {
  return run.rounds[run.rounds.length - 1];
}

function sideBySide([a, b]) {
  const da = a.detail;
  const db = b.detail;
  const keys = [...new Set([...Object.keys(da.run_config || {}), ...Object.keys(db.run_config || {})])].sort();
  const la = lastRound(a) || { metrics: {}, nodes: [] };
  const lb = lastRound(b) || { metrics: {}, nodes: [] };
  const metricKeys = [...new Set([...Object.keys(la.metrics), ...Object.keys(lb.metrics)])].sort();
  const hospitals = [...new Set([...nodeIds([la]), ...nodeIds([lb])])].sort();
  const auc = (last, node) => part(last, node, "evaluate")?.metrics.auc;
  const section = (title) => h("tr", { class: "section" }, h("th", { colspan: 3, scope: "colgroup" }, title));
  return h("div", { class: "table-wrap" }, h("table", { id: "comparison", class: "compare" },
    h("thead", {}, h("tr", {}, h("th", {}, ""),
      h("th", { scope: "col" }, h("a", { href: `#/runs/${encodeURIComponent(da.run_id)}` }, da.run_id), " ", badge(da.status)),
      h("th", { scope: "col" }, h("a", { href: `#/runs/${encodeURIComponent(db.run_id)}` }, db.run_id), " ", badge(db.status)))),
    h("tbody", {},
      section("Run"),
      rows("app", `${da.app_name} ${da.app_version}`, `${db.app_name} ${db.app_version}`),
      rows("bundle sha256", da.app_sha256, db.app_sha256, { className: "hash" }),
      rows("seed", da.seed, db.seed),
      rows("rounds done", a.rounds.length, b.rounds.length),
      section(`Final metrics (rounds ${la.round ?? "—"} and ${lb.round ?? "—"})`),
      metricKeys.map((k) => rows(k, la.metrics[k], lb.metrics[k], { format: num })),
      section("Final AUC per hospital"),
      hospitals.map((n) => rows(n, auc(la, n), auc(lb, n), { format: num })),
      section("Run config"),
      keys.map((k) => rows(k, (da.run_config || {})[k], (db.run_config || {})[k])))));
}

export async function render(main, first = "", second = "") {
  const { runs } = await get("/runs");
  const pickA = picker(runs, first, "first run");
  const pickB = picker(runs, second, "second run");
  const go = () => {
    if (pickA.value && pickB.value) {
      location.hash = `#/compare/${encodeURIComponent(pickA.value)}/${encodeURIComponent(pickB.value)}`;
    }
  };
  pickA.addEventListener("change", go);
  pickB.addEventListener("change", go);
  const body = h("div", { id: "compare-body" });
  fill(main, h("h1", {}, "Compare runs"), h("div", { class: "row pickers" }, pickA, h("span", {}, "vs"), pickB), body);
  if (!first || !second) {
    fill(body, note("info", "Pick two runs (or tick two on the Runs page)."));
    return;
  }
  const both = await Promise.all([load(first), load(second)]);
  const key = preferredKey(globalKeys([...both[0].rounds, ...both[1].rounds]));
  fill(body, h("div", { class: "compare-layout" },
    sideBySide(both),
    lineChart({
      id: "compare-global",
      title: `Global ${key || "metric"} per round`,
      yLabel: key || "",
      format: num,
      series: both.map((run) => ({ name: run.detail.run_id, points: run.rounds.map((r) => [r.round, r.metrics[key]]) })),
    })));
}
