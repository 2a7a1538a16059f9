// Shared by /admin and /me: JSON calls with the session's CSRF token, set-up snippets, copy buttons.
"use strict";

const Console = (() => {
  let csrf = "";

  function setCsrf(token) { csrf = token || ""; }

  // fetch() with the session cookie (same origin), JSON in and out; throws Error(message) on non-2xx.
  async function call(method, path, body) {
    const headers = { "accept": "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (method !== "GET") headers["x-csrf-token"] = csrf;
    const resp = await fetch(path, { method, headers, credentials: "same-origin",
                                     body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!resp.ok) {
      const message = (data && data.error && data.error.message) || `${resp.status} ${resp.statusText}`;
      const error = new Error(message);
      error.status = resp.status;
      throw error;
    }
    return data;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function copy(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {  // no clipboard permission (plain http on a LAN): select-and-copy fallback
      const area = el("textarea", { "aria-hidden": "true" });
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    if (button) {
      const before = button.textContent;
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = before; }, 1500);
    }
  }

  function copyButton(label, text) {
    const button = el("button", { type: "button", class: "copy", "aria-label": label, text: "Copy" });
    button.addEventListener("click", () => copy(text(), button));
    return button;
  }

  // Ready-to-paste set-up for each tool, against this page's own origin (what the browser reached).
  function snippets(key) {
    const base = location.origin;
    const api = `${base}/api`;
    return [
      ["Claude Code", `export ANTHROPIC_BASE_URL=${api}\nexport ANTHROPIC_AUTH_TOKEN=${key}\nclaude`],
      ["Anthropic SDK (Python)",
       `import anthropic\n\nclient = anthropic.Anthropic(base_url="${api}",\n` +
       `                             api_key="${key}")\n` +
       `msg = client.messages.create(model="claude-sonnet-5-5", max_tokens=256,\n` +
       `                             messages=[{"role": "user", "content": "Hello"}])`],
      ["OpenAI SDK (Python)",
       `import openai\n\nclient = openai.OpenAI(base_url="${api}/v1",\n` +
       `                       api_key="${key}")\n` +
       `chat = client.chat.completions.create(model="claude-sonnet-5-5",\n` +
       `                                      messages=[{"role": "user", "content": "Hello"}])`],
      ["Codex CLI (~/.codex/config.toml)",
       `model_provider = "ccproxy"\nmodel = "claude-sonnet-5-5"\n\n[model_providers.ccproxy]\n` +
       `name = "ccproxy"\nbase_url = "${api}/v1"\nenv_key = "CCPROXY_API_KEY"\nwire_api = "responses"\n\n` +
       `# then: export CCPROXY_API_KEY=${key}`],
      ["curl",
       `curl ${api}/v1/messages -H 'content-type: application/json' \\\n  -H 'x-api-key: ${key}' \\\n` +
       `  -d '{"model":"claude-sonnet-5-5","max_tokens":256,"messages":[{"role":"user","content":"Hello"}]}'`],
    ];
  }

  function renderSnippets(container, key) {
    container.replaceChildren();
    for (const [title, text] of snippets(key)) {
      container.append(el("div", { class: "snippet" },
        el("h3", {}, el("span", { text: title }), copyButton(`Copy the ${title} set-up`, () => text)),
        el("pre", { text })));
    }
  }

  const usd = (v) => (v === null || v === undefined) ? "–" : `$${Number(v).toFixed(v < 1 ? 4 : 2)}`;
  const num = (v) => (v === null || v === undefined) ? "–" : Number(v).toLocaleString("en-US");
  const when = (ts) => ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 16) + " UTC" : "–";

  function budgetBar(spent, budget) {
    if (!budget) return null;
    const share = Math.min(1, (spent || 0) / budget);
    return el("div", { class: share > 0.9 ? "bar high" : "bar", role: "img",
                       "aria-label": `${Math.round(share * 100)}% of the budget spent` },
              el("span", { style: null, "data-w": share }));
  }

  // Bars get their width here (the CSP forbids inline style attributes, not CSSOM).
  function sizeBars(root) {
    for (const span of root.querySelectorAll(".bar > span[data-w]")) {
      span.style.width = `${Math.round(Number(span.dataset.w) * 100)}%`;
    }
  }

  function showError(node, error) { node.textContent = error ? (error.message || String(error)) : ""; }

  // An action that fails because the session ended goes back to the sign-in form (`signedOut`).
  async function guarded(errorNode, action, signedOut) {
    showError(errorNode, null);
    try {
      return await action();
    } catch (error) {
      if (error.status === 401) signedOut();
      showError(errorNode, error);
      return undefined;
    }
  }

  // The page's session at `path`: POST signs in with the secret typed into the input `field` (sent
  // as `field`, cleared either way), DELETE signs out, GET says whether there is one. Wires the
  // sign-in form and the sign-out button, then shows the page for the current state; its answer.
  async function session(path, field, signedIn, signedOut) {
    const byId = (id) => document.getElementById(id);
    byId("signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(byId("signin-error"), null);
      const input = byId(field);
      try {
        const state = await call("POST", path, { [field]: input.value });
        input.value = "";
        await signedIn(state);
      } catch (error) {
        input.value = "";
        showError(byId("signin-error"), error);
        input.focus();
      }
    });
    byId("sign-out").addEventListener("click", async () => {
      try { await call("DELETE", path); } catch (_) { /* the cookie goes anyway */ }
      signedOut();
    });
    try {
      const state = await call("GET", path);
      if (state.signed_in) await signedIn(state); else signedOut();
      return state;
    } catch (error) {
      signedOut();
      showError(byId("signin-error"), error);
      return null;
    }
  }

  return { setCsrf, call, el, copy, copyButton, snippets, renderSnippets, usd, num, when, budgetBar, sizeBars,
           showError, guarded, session };
})();
