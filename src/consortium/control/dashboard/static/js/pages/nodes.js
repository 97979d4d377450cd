// Nodes: who is online, when each was last seen, what each is working on.

import { get } from "../api.js";
import { ago, fill, h, note, table, when } from "../dom.js";

const REFRESH_MS = 3000;

function row(node) {
  const task = node.current_task
    ? h("a", { href: `#/runs/${encodeURIComponent(node.current_task.run_id)}` },
      `run ${node.current_task.run_id}, round ${node.current_task.round}`)
    : "idle";
  return h("tr", { dataset: { node: node.id, status: node.status } },
    h("td", {}, h("span", { class: ["dot", node.status] }), " ", h("strong", {}, node.id)),
    h("td", {}, h("span", { class: ["badge", `status-${node.status}`] }, node.status)),
    h("td", { title: when(node.last_seen) }, ago(node.last_seen)),
    h("td", {}, task),
    h("td", {}, node.allowed === null ? "—" : node.allowed ? "yes" : "no"),
    h("td", {}, node.organisation || "—"),
    h("td", {}, node.version || "—"));
}

export async function render(main) {
  const summary = h("p", { id: "nodes-summary", class: "summary" });
  const body = h("div", { id: "nodes" });
  const status = h("div");
  fill(main, h("h1", {}, "Nodes"), summary, body, status);

  async function refresh() {
    const { nodes } = await get("/nodes");
    const online = nodes.filter((n) => n.status === "online").length;
    fill(summary, `${online} of ${nodes.length} online`);
    fill(body, nodes.length
      ? table(["Node", "Status", "Last seen", "Current task", "Allowed", "Organisation", "Version"],
        nodes.map(row), { class: "nodes" })
      : note("info", "No node has connected to this server yet."));
  }

  await refresh();
  const timer = setInterval(() => {
    refresh().then(() => fill(status), (error) => {
      if (error.status !== 401) fill(status, note("error", `Could not refresh: ${error.message}`));
    });
  }, REFRESH_MS);
  return () => clearInterval(timer);
}
