// The dashboard's router: the part of the URL after "#" names the page
// (#/nodes, #/apps, #/runs, #/start, #/runs/<id>/<tab>, #/compare/<a>/<b>, #/audit, #/login).
// A page is render(main, ...params) -> optional cleanup, called when the user leaves it
// (to stop its timers and event streams).

import { ApiError, logout, token } from "./api.js";
import { fill, h, note } from "./dom.js";
import * as apps from "./pages/apps.js";
import * as audit from "./pages/audit.js";
import * as compare from "./pages/compare.js";
import * as login from "./pages/login.js";
import * as nodes from "./pages/nodes.js";
import * as run from "./pages/run.js";
import * as runs from "./pages/runs.js";
import * as start from "./pages/start.js";

const PAGES = { login, nodes, apps, runs, start, compare, audit };

let cleanup = null;
let generation = 0;

function parse() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const [page = "nodes", ...rest] = parts;
  if (page === "runs" && rest.length) return { name: "runs", page: run, params: rest };
  return { name: page, page: PAGES[page], params: rest };
}

async function route() {
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  const mine = ++generation;
  const main = document.getElementById("main");
  const { name, page, params } = parse();
  if (!token() && name !== "login") {
    sessionStorage.setItem("consortium.next", location.hash);
    location.hash = "#/login";
    return;
  }
  document.body.classList.toggle("logged-out", name === "login");
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.page === name);
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!page) {
    fill(main, h("h1", {}, "Not found"), note("error", `There is no page "${name}".`));
    return;
  }
  fill(main, h("p", { class: "loading" }, "Loading…"));
  try {
    const done = await page.render(main, ...params);
    if (mine !== generation) {
      if (typeof done === "function") done(); // the user moved on while it loaded
    } else {
      cleanup = typeof done === "function" ? done : null;
    }
  } catch (error) {
    if (mine !== generation || (error instanceof ApiError && error.status === 401)) return;
    fill(main, h("h1", {}, "Something went wrong"), note("error", error.message || String(error)));
  }
}

document.getElementById("logout").addEventListener("click", () => logout("Logged out."));
window.addEventListener("hashchange", route);
route();
