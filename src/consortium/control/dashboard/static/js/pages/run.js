// One run: its facts, and tabs (training, system, models, parameters) that follow the run
// live through its event stream (GET /runs/{id}/events).

import { events, get, post } from "../api.js";
import { badge, fill, h, note, when } from "../dom.js";
import { merge } from "../rounds.js";
import { models, params, system, training } from "./run_tabs.js";

const TABS = { training: ["Training", training], system: ["System", system], models: ["Models", models], params: ["Parameters", params] };
export const TERMINAL = ["finished", "failed", "stopped", "interrupted"];
const RETRY_MS = 2000;
const WAITING_MS = 5000;

function waitingText(waiting) {
  if (!waiting || !waiting.missing.length) return null;
  const whom = waiting.missing.join(", ");
  return waiting.stage === "replies"
    ? `Waiting ${waiting.seconds} s for replies from ${whom}.`
    : `Waiting ${waiting.seconds} s for nodes to come online: ${whom}.`;
}

function fact(label, ...value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, ...value));
}

function header(state, onStop) {
  const { detail, rounds, live } = state;
  const done = rounds.length ? rounds[rounds.length - 1].round : 0;
  const total = detail.num_rounds || null;
  const active = !TERMINAL.includes(detail.status);
  const stop = active ? h("button", { type: "button", id: "stop-run", class: "danger" }, "Stop") : null;
  if (stop) stop.addEventListener("click", onStop);
  return h("div", { class: "run-head" },
    h("div", { class: "title-row" },
      h("h1", {}, "Run ", h("code", {}, detail.run_id)),
      h("span", { id: "run-status" }, badge(detail.status)),
      h("span", { class: ["live", live ? "on" : "off"], id: "live" }, live ? "● live" : ""),
      h("div", { class: "actions" }, stop,
        h("a", { class: "button quiet", href: `#/compare/${encodeURIComponent(detail.run_id)}` }, "Compare…"))),
    h("dl", { class: "facts-grid" },
      fact("App", `${detail.app_name || detail.app || "—"} ${detail.app_version || ""}`),
      fact("Rounds", h("span", { id: "rounds-done" }, total ? `${done} of ${total}` : String(done)),
        total ? h("progress", { max: total, value: done }) : null),
      fact("Created", when(detail.created)),
      fact("Finished", when(detail.finished)),
      fact("Started by", detail.started_by || "—"),
      fact("Seed", detail.seed ?? "—")),
    detail.error ? note("error", detail.error) : null,
    waitingText(detail.waiting) ? note("info", waitingText(detail.waiting)) : null,
    state.message ? note("info", state.message) : null);
}

export async function render(main, runId, tab = "training") {
  if (!TABS[tab]) tab = "training";
  const [detail, metrics] = await Promise.all([
    get(`/runs/${encodeURIComponent(runId)}`),
    get(`/runs/${encodeURIComponent(runId)}/metrics`),
  ]);
  const state = { detail, rounds: metrics.rounds, live: false, message: "", globalKey: null };
  const head = h("div");
  const body = h("div", { class: "tab-body" });
  const tabs = h("nav", { class: "tabs", "aria-label": "Run tabs" }, Object.entries(TABS).map(([key, [label]]) =>
    h("a", { href: `#/runs/${encodeURIComponent(runId)}/${key}`, class: key === tab ? "active" : null,
      "aria-current": key === tab ? "page" : null, dataset: { tab: key } }, label)));
  const controller = new AbortController();

  async function stopRun() {
    try {
      const answer = await post(`/runs/${encodeURIComponent(runId)}/stop`, {});
      state.message = answer.stopped ? "Stopping at the end of this round." : "The run was not running here.";
    } catch (error) {
      state.message = `Could not stop it: ${error.message}`;
    }
    draw();
  }
  function draw(whole = true) {
    fill(head, header(state, stopRun));
    // the models and parameters tabs hold buttons and text the user may be reading
    if (whole || tab === "training" || tab === "system") fill(body, TABS[tab][1](state));
  }
  async function refreshDetail() {
    const fresh = await get(`/runs/${encodeURIComponent(runId)}`);
    // an answer overtaken by the run's end must not bring it back to life
    if (TERMINAL.includes(state.detail.status) && !TERMINAL.includes(fresh.status)) return;
    state.detail = fresh;
  }

  async function follow() {
    while (!controller.signal.aborted && !TERMINAL.includes(state.detail.status)) {
      const last = state.rounds.length ? state.rounds[state.rounds.length - 1].round : 0;
      state.live = true;
      draw(false);
      try {
        await events(runId, last, ({ event, data }) => {
          const ended = event === "run_finished";
          if (event === "round_finished") {
            state.rounds = merge(state.rounds, data);
            if (state.detail.status === "pending") state.detail.status = "running";
          } else if (ended) {
            state.detail.status = data.status;
            state.live = false;
          }
          draw(ended);
          // the header's facts (finished, waiting, error) come from the run itself
          refreshDetail().then(() => controller.signal.aborted || draw(ended), () => {});
        }, controller.signal);
      } catch (error) {
        if (controller.signal.aborted || error.status === 401) return;
        state.message = `Lost the event stream (${error.message}); reconnecting…`;
      }
      if (controller.signal.aborted) return;
      await refreshDetail().catch(() => {});
      if (!TERMINAL.includes(state.detail.status)) await new Promise((r) => setTimeout(r, RETRY_MS));
      state.message = "";
    }
    state.live = false;
    if (!controller.signal.aborted) draw(false);
  }

  fill(main, head, tabs, body);
  draw();
  follow();
  // who the run waits for changes between rounds too
  const timer = setInterval(() => {
    if (TERMINAL.includes(state.detail.status)) return;
    refreshDetail().then(() => controller.signal.aborted || fill(head, header(state, stopRun)), () => {});
  }, WAITING_MS);
  return () => {
    controller.abort();
    clearInterval(timer);
  };
}
