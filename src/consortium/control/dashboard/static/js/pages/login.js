// Log in: paste a token (consortium token create); it is checked before it is kept.

import { setToken, takeFlash, tryToken } from "../api.js";
import { fill, h, note } from "../dom.js";

export function render(main) {
  const flash = takeFlash();
  const message = h("div", { id: "login-message" }, flash ? note("info", flash) : null);
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off", spellcheck: "false",
    required: true, placeholder: "paste the token here",
  });
  const submit = h("button", { type: "submit" }, "Log in");
  const form = h("form", { class: "card login" },
    h("h1", {}, "Log in"),
    h("p", {}, "The dashboard reads the server's REST API with your API token. "
      + "It is kept in this browser tab only, until you log out or close the tab."),
    h("label", { for: "token" }, "API token"),
    input,
    h("p", { class: "hint" }, "An operator issues one on the server: ",
      h("code", {}, "consortium token create --role researcher --name YOU --workdir WORKDIR"),
      ". With consortium local it is in DIR/admin-token."),
    message,
    submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = input.value.trim();
    submit.disabled = true;
    try {
      await tryToken(candidate);
      setToken(candidate);
      const next = sessionStorage.getItem("consortium.next");
      sessionStorage.removeItem("consortium.next");
      location.hash = next && !next.startsWith("#/login") ? next : "#/nodes";
    } catch (error) {
      fill(message, note("error", `The server refused this token: ${error.message}`));
      submit.disabled = false;
    }
  });
  fill(main, form);
  input.focus();
}
