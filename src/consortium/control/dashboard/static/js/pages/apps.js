// Apps: every uploaded bundle (name, version, sha256) and an upload form.

import { get, upload } from "../api.js";
import { bytes, fill, h, note, table, when } from "../dom.js";

function row(app) {
  return h("tr", { dataset: { app: app.name, version: app.version } },
    h("td", {}, h("strong", {}, app.name), app.description ? h("div", { class: "hint" }, app.description) : null),
    h("td", {}, app.version),
    h("td", {}, h("code", { class: "hash" }, app.sha256)),
    h("td", {}, bytes(app.size)),
    h("td", {}, app.uploaded_by),
    h("td", {}, when(app.uploaded_at)),
    h("td", {}, h("a", { href: `#/start/${encodeURIComponent(app.name)}/${encodeURIComponent(app.version)}` }, "Start a run")));
}

export async function render(main) {
  const list = h("div", { id: "apps" });
  const result = h("div", { id: "upload-result" });
  const file = h("input", { id: "bundle", type: "file", accept: ".cab,.zip", required: true });
  const button = h("button", { type: "submit" }, "Upload");
  const form = h("form", { class: "card inline-form", id: "upload" },
    h("h2", {}, "Upload an app bundle"),
    h("p", { class: "hint" }, "A bundle from ", h("code", {}, "consortium app build FOLDER"),
      " (signed or not). Nodes run only bundles signed by a key they trust."),
    h("div", { class: "row" }, h("label", { for: "bundle" }, "Bundle"), file, button),
    result);

  async function refresh() {
    const { apps } = await get("/apps");
    fill(list, apps.length
      ? table(["App", "Version", "SHA-256", "Size", "Uploaded by", "Uploaded", ""], apps.map(row), { class: "apps" })
      : note("info", "No app uploaded yet."));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) return;
    button.disabled = true;
    fill(result, note("info", `Uploading ${chosen.name}…`));
    try {
      const entry = await upload("/apps", await chosen.arrayBuffer());
      fill(result, note("ok", `Uploaded ${entry.name} ${entry.version} (sha256 ${entry.sha256}).`));
      form.reset();
      await refresh();
    } catch (error) {
      fill(result, note("error", `Upload refused: ${error.message}`));
    } finally {
      button.disabled = false;
    }
  });

  fill(main, h("h1", {}, "Apps"), list, form);
  await refresh();
}
