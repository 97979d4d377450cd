// The run page's tabs: training (live charts), system, models, parameters.
// Each is tab(state) -> element, drawn again whenever a round arrives.

import { download } from "../api.js";
import { lineChart } from "../chart.js";
import { bytes, fill, h, note, num, seconds, show, table } from "../dom.js";
import { globalKeys, nodeIds, part, perNode, preferredKey } from "../rounds.js";

export function training(state) {
  const { rounds } = state;
  const keys = globalKeys(rounds);
  if (!state.globalKey || !keys.includes(state.globalKey)) state.globalKey = preferredKey(keys);
  const globalBox = h("div", { class: "chart-box" });
  const drawGlobal = () => fill(globalBox, lineChart({
    id: "global",
    title: `Global: ${state.globalKey || "no metric yet"}`,
    yLabel: state.globalKey || "",
    format: num,
    series: [{ name: state.globalKey || "global", points: rounds.map((r) => [r.round, r.metrics[state.globalKey]]) }],
  }));
  const select = h("select", { id: "global-metric", "aria-label": "global metric" },
    keys.map((k) => h("option", { value: k, selected: k === state.globalKey }, k)));
  select.addEventListener("change", () => {
    state.globalKey = select.value;
    drawGlobal();
  });
  drawGlobal();
  const metric = (key) => (p) => p.metrics[key];
  return h("section", { id: "tab-training" },
    h("div", { class: "chart-tools" }, h("label", { for: "global-metric" }, "Global metric "), select),
    h("div", { class: "charts" },
      globalBox,
      lineChart({ id: "auc", title: "AUC per hospital (evaluation)", yLabel: "AUC", format: num,
        series: perNode(rounds, "evaluate", metric("auc")) }),
      lineChart({ id: "loss", title: "Loss per hospital (evaluation)", yLabel: "loss", format: num,
        series: perNode(rounds, "evaluate", metric("loss")) }),
      lineChart({ id: "train-loss", title: "Training loss per hospital", yLabel: "loss", format: num,
        series: perNode(rounds, "train", metric("loss")) })),
    latest(rounds));
}

function latest(rounds) {
  const last = rounds[rounds.length - 1];
  if (!last) return note("info", "No round has finished yet.");
  const cell = (value) => h("td", { class: "number", dataset: { value: value ?? "" } }, num(value));
  const rows = nodeIds([last]).map((node) => {
    const train = part(last, node, "train");
    const evaluation = part(last, node, "evaluate");
    const m = evaluation ? evaluation.metrics : {};
    return h("tr", { dataset: { node } },
      h("td", {}, h("strong", {}, node)),
      cell(train ? train.metrics.loss : null),
      cell(m.loss), cell(m.accuracy), h("td", { class: "number auc", dataset: { value: m.auc ?? "" } }, num(m.auc)),
      h("td", { class: "number" }, train ? String(train.num_examples) : "—"),
      h("td", { class: "number" }, evaluation ? String(evaluation.num_examples) : "—"));
  });
  return h("div", { class: "card" },
    h("h2", {}, `Round ${last.round}, per hospital`),
    table(["Hospital", "Train loss", "Eval loss", "Accuracy", "AUC", "Train rows", "Test rows"], rows,
      { id: "latest-metrics" }));
}

const BYTES = /bytes/;

export function system(state) {
  const { rounds } = state;
  const nodes = nodeIds(rounds);
  const timingKeys = [...new Set(rounds.flatMap((r) => r.nodes.flatMap((n) => Object.keys(n.timing))))].sort();
  const byteKeys = [...new Set(rounds.flatMap((r) => r.nodes.flatMap((n) => Object.keys({ ...n.metrics, ...n.timing }))))]
    .filter((k) => BYTES.test(k)).sort();
  const mean = (values) => (values.length ? values.reduce((a, b) => a + b, 0) / values.length : null);
  const parts = (node, stage) => rounds.map((r) => part(r, node, stage)).filter(Boolean);
  const rows = nodes.map((node) => {
    const train = parts(node, "train");
    const evaluation = parts(node, "evaluate");
    const failed = [...train, ...evaluation].filter((p) => p.outcome !== "ok").length;
    return [
      h("strong", {}, node),
      String(train.length + evaluation.length - failed), String(failed),
      seconds(mean(train.map((p) => p.seconds).filter((v) => v !== null))),
      seconds(mean(evaluation.map((p) => p.seconds).filter((v) => v !== null))),
      ...timingKeys.map((k) => seconds(mean(train.map((p) => p.timing[k]).filter((v) => v != null)))),
      ...byteKeys.map((k) => bytes(train.concat(evaluation).reduce((a, p) => a + ({ ...p.metrics, ...p.timing }[k] || 0), 0))),
    ];
  });
  const failures = rounds.flatMap((r) => r.nodes.filter((n) => n.outcome !== "ok")
    .map((n) => [String(r.round), n.node, n.stage, n.outcome, n.reason || ""]));
  return h("section", { id: "tab-system" },
    h("div", { class: "charts" },
      lineChart({ id: "train-seconds", title: "Training task duration per node (s)", yLabel: "seconds",
        format: seconds, series: perNode(rounds, "train", (p) => p.seconds) }),
      lineChart({ id: "eval-seconds", title: "Evaluation task duration per node (s)", yLabel: "seconds",
        format: seconds, series: perNode(rounds, "evaluate", (p) => p.seconds) }),
      lineChart({ id: "round-seconds", title: "Round duration (s)", yLabel: "seconds", format: seconds,
        series: [{ name: "round", points: rounds.map((r) => [r.round, r.seconds]) }] })),
    h("div", { class: "card" },
      h("h2", {}, "Per node"),
      table(["Node", "Tasks ok", "Failed", "Mean train task", "Mean evaluation task",
        ...timingKeys.map((k) => `Mean ${k} (train)`), ...byteKeys.map((k) => `Total ${k}`)], rows, { id: "system-nodes" }),
      byteKeys.length ? null
        : h("p", { class: "hint" }, "Bytes sent and received per node are not reported by this server's API; "
          + "timings are what each node measured (train: its computation, wait: queued, upload: sending its reply).")),
    failures.length
      ? h("div", { class: "card" }, h("h2", {}, "Failed tasks"),
        table(["Round", "Node", "Stage", "Outcome", "Reason"], failures, { id: "failures" }))
      : null);
}

export function models(state) {
  const { detail } = state;
  const result = h("div", { id: "download-result" });
  const button = (format) => {
    const b = h("button", { type: "button", id: `download-${format}` }, `Download .${format}`);
    b.addEventListener("click", async () => {
      b.disabled = true;
      fill(result, note("info", `Downloading the ${format} model…`));
      try {
        const file = await download(`/runs/${encodeURIComponent(detail.run_id)}/model?format=${format}`,
          `${detail.run_id}.${format}`);
        fill(result, note("ok", `Saved ${file.name} (${bytes(file.size)}).`));
      } catch (error) {
        fill(result, note("error", `No model: ${error.message}`));
      } finally {
        b.disabled = false;
      }
    });
    return b;
  };
  const done = detail.status === "finished";
  const checkpoint = detail.checkpoint ? `round ${detail.checkpoint.round}` : null;
  return h("section", { id: "tab-models", class: "card" },
    h("h2", {}, "Global model"),
    h("p", {}, done ? "The run's final global model."
      : checkpoint ? `The run has not finished: this is its newest checkpoint (${checkpoint}).`
        : "No model yet: the run saves one when its first round ends."),
    h("div", { class: "actions" }, button("npz"), button("safetensors")),
    result,
    h("p", { class: "hint" }, "Load it with numpy alone: ",
      h("code", {}, `numpy.load("${detail.run_id}.npz", allow_pickle=False)`),
      "; or with the SDK: ", h("code", {}, `ControlClient(url, token).download_model("${detail.run_id}", "model.npz")`), "."));
}

export function params(state) {
  const { detail } = state;
  const config = Object.entries(detail.run_config || {}).map(([k, v]) => [h("code", {}, k), show(v)]);
  return h("section", { id: "tab-params" },
    h("div", { class: "card" }, h("h2", {}, "Run config"),
      config.length ? table(["Key", "Value"], config, { id: "run-config-table" }) : note("info", "Empty: the app's defaults.")),
    h("div", { class: "card" }, h("h2", {}, "App"),
      table(["", ""], [
        ["App", `${detail.app_name || "—"} ${detail.app_version || ""}`],
        ["Bundle SHA-256", h("code", { class: "hash" }, detail.app_sha256 || "—")],
        ["Seed", detail.seed === null || detail.seed === undefined ? "—" : String(detail.seed)],
        ["Started by", detail.started_by ? `${detail.started_by} (${detail.started_by_role})` : "— (see the audit log)"],
      ], { class: "facts" })));
}
