// Start a run: pick an app, edit its run config, pick the nodes, go.
//
// The fields start from the app's own [run-config] defaults (GET /apps lists them);
// an upload listed before the server kept them falls back to the newest earlier run of
// the same app. Keys left out take the app's defaults.

import { get, post } from "../api.js";
import { fill, h, note, show } from "../dom.js";

/** A typed-in value as the run config holds it: a number, true/false, a [list] or text. */
export function parseValue(text) {
  const trimmed = text.trim();
  if (trimmed === "") throw new Error("is empty");
  let value;
  try {
    value = JSON.parse(trimmed);
  } catch {
    return trimmed; // plain text, e.g. sgd
  }
  const scalar = (v) => ["number", "boolean", "string"].includes(typeof v);
  if (scalar(value) || (Array.isArray(value) && value.every(scalar))) return value;
  if (value === null) return trimmed;
  throw new Error("must be a number, true/false, text or a [list] of those");
}

function configRow(key = "", value = "") {
  const row = h("div", { class: "kv" },
    h("input", { class: "key", "aria-label": "key", value: key, placeholder: "key", spellcheck: "false" }),
    h("input", { class: "value", "aria-label": `value of ${key || "new key"}`, value, placeholder: "value", spellcheck: "false" }),
    h("button", { type: "button", class: "quiet remove", "aria-label": `remove ${key || "row"}` }, "×"));
  row.querySelector(".key").addEventListener("input", (event) => {
    row.querySelector(".value").setAttribute("aria-label", `value of ${event.target.value}`);
  });
  row.querySelector(".remove").addEventListener("click", () => row.remove());
  return row;
}

async function defaultsFrom(runs, name) {
  const earlier = runs.find((run) => run.app.startsWith(`${name} `));
  if (!earlier) return null;
  const detail = await get(`/runs/${encodeURIComponent(earlier.run_id)}`);
  return { runId: earlier.run_id, config: detail.run_config || {} };
}

export async function render(main, wantedName, wantedVersion) {
  const [{ apps }, { runs }, { nodes }] = await Promise.all([get("/apps"), get("/runs"), get("/nodes")]);
  const builds = [];
  for (const app of apps) {
    if (!builds.some((b) => b.name === app.name && b.version === app.version)) builds.push(app);
  }
  if (!builds.length) {
    fill(main, h("h1", {}, "Start a run"),
      note("info", "No app on this server yet: ", h("a", { href: "#/apps" }, "upload one"), " first."));
    return;
  }
  const picked = Math.max(0, builds.findIndex((b) => b.name === wantedName
    && (!wantedVersion || b.version === wantedVersion)));
  const appSelect = h("select", { id: "app", name: "app" }, builds.map((b, i) => h("option",
    { value: String(i), selected: i === picked }, `${b.name} ${b.version}`)));
  const appFacts = h("p", { class: "hint", id: "app-facts" });
  const rows = h("div", { id: "run-config", class: "kv-list" });
  const origin = h("p", { class: "hint", id: "config-origin" });
  const add = h("button", { type: "button", class: "quiet", id: "add-field" }, "+ Add a field");
  const seed = h("input", { id: "seed", type: "number", min: 0, step: 1, placeholder: "random" });
  const nodeList = h("div", { id: "node-picker", class: "picker" }, nodes.map((node) => h("label", {},
    h("input", { type: "checkbox", name: "node", value: node.id, checked: node.status === "online" }),
    ` ${node.id} `, h("span", { class: ["badge", `status-${node.status}`] }, node.status))));
  const message = h("div", { id: "start-message" });
  const submit = h("button", { type: "submit", id: "start-run" }, "Start the run");

  async function chooseApp() {
    const build = builds[Number(appSelect.value)];
    fill(appFacts, `sha256 ${build.sha256}`, build.description ? ` · ${build.description}` : "");
    const own = build.run_config && Object.keys(build.run_config).length ? build.run_config : null;
    const found = own ? null : await defaultsFrom(runs, build.name);
    const config = own || (found ? found.config : { "num-rounds": 3 });
    fill(rows, Object.entries(config).map(([key, value]) => configRow(key, show(value))));
    fill(origin, own
      ? `The defaults of ${build.name} ${build.version} (its consortium.toml [run-config]); edit what this run changes.`
      : found
        ? `Filled in from the newest run of ${build.name} (${found.runId}); keys you remove take the app's defaults.`
        : "Keys you leave out take the app's defaults (its consortium.toml [run-config]).");
  }
  appSelect.addEventListener("change", () => chooseApp().catch((error) => fill(message, note("error", error.message))));
  add.addEventListener("click", () => {
    const row = configRow();
    rows.append(row);
    row.querySelector(".key").focus();
  });

  const form = h("form", { class: "card start", id: "start-form", novalidate: true },
    h("div", {},
      h("div", { class: "field" }, h("label", { for: "app" }, "App"), appSelect, appFacts),
      h("fieldset", {}, h("legend", {}, "Run config"), origin, rows, add)),
    h("div", {},
      h("fieldset", {}, h("legend", {}, "Nodes"), nodes.length ? nodeList : note("info", "No node known yet.")),
      h("div", { class: "field" }, h("label", { for: "seed" }, "Seed"), seed,
        h("p", { class: "hint" }, "The same seed gives the same model.")),
      message, submit));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const bad of form.querySelectorAll(".invalid")) bad.classList.remove("invalid");
    const build = builds[Number(appSelect.value)];
    const runConfig = {};
    try {
      for (const row of rows.querySelectorAll(".kv")) {
        const keyInput = row.querySelector(".key");
        const valueInput = row.querySelector(".value");
        const key = keyInput.value.trim();
        if (!key && !valueInput.value.trim()) continue;
        if (!key) throw Object.assign(new Error("a run-config row has a value but no key"), { input: keyInput });
        if (key in runConfig) throw Object.assign(new Error(`run config: "${key}" is given twice`), { input: keyInput });
        try {
          runConfig[key] = parseValue(valueInput.value);
        } catch (error) {
          throw Object.assign(new Error(`run config "${key}": ${error.message}`), { input: valueInput });
        }
      }
    } catch (error) {
      error.input.classList.add("invalid");
      fill(message, note("error", error.message));
      return;
    }
    const chosen = [...nodeList.querySelectorAll("input:checked")].map((box) => box.value);
    if (!chosen.length) {
      fill(message, note("error", "nodes: pick at least one node"));
      return;
    }
    const body = { app: build.name, version: build.version, run_config: runConfig, nodes: chosen };
    if (seed.value !== "") body.seed = Number(seed.value);
    submit.disabled = true;
    try {
      const { run_id: runId } = await post("/runs", body);
      location.hash = `#/runs/${encodeURIComponent(runId)}`;
    } catch (error) {
      fill(message, note("error", `The server did not start the run: ${error.message}`));
      const where = { nodes: nodeList, seed, app: appSelect, run_config: rows }[(error.field || "").split(".")[0]];
      if (where) where.classList.add("invalid");
      submit.disabled = false;
    }
  });

  fill(main, h("h1", {}, "Start a run"), form);
  await chooseApp();
}
