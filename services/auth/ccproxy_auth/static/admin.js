// The console at /admin: sign in with the admin token (a session cookie results), then keys and accounts.
"use strict";

(() => {
  const { call, el, usd, num, when, showError } = Console;
  const $ = (id) => document.getElementById(id);
  let editing = null;
  let loginId = null;

  function signedIn(state) {
    Console.setCsrf(state.csrf);
    $("signin").classList.add("hidden");
    $("app").classList.remove("hidden");
    $("nav").classList.remove("hidden");
    $("keys-off").classList.toggle("hidden", state.keys !== false);
    $("create-form").classList.toggle("hidden", state.keys === false);
    refresh();
  }

  function signedOut() {
    Console.setCsrf("");
    $("app").classList.add("hidden");
    $("nav").classList.add("hidden");
    $("signin").classList.remove("hidden");
    $("token").focus();
  }

  async function refresh() {
    await Promise.all([loadKeys(), loadAccounts()]);
  }

  const guarded = (errorNode, action) => Console.guarded(errorNode, action, signedOut);

  const optInt = (id) => $(id).value.trim() === "" ? null : Number.parseInt($(id).value, 10);
  const optNum = (id) => $(id).value.trim() === "" ? null : Number($(id).value);
  const optDate = (id) => $(id).value ? Date.parse($(id).value + "T23:59:59Z") / 1000 : null;
  const list = (id) => $(id).value.split(",").map((s) => s.trim()).filter(Boolean);
  const dateValue = (ts) => ts ? new Date(ts * 1000).toISOString().slice(0, 10) : "";

  function limits(k) {
    const parts = [];
    if (k.rpm) parts.push(`${num(k.rpm)} req/min`);
    if (k.tpm) parts.push(`${num(k.tpm)} tok/min`);
    if (k.accounts && k.accounts.length) parts.push(`accounts: ${k.accounts.join(", ")}`);
    return parts.length ? parts.join(" · ") : "none";
  }

  function keyRow(k) {
    const period = k.budget_usd
      ? el("div", {}, `${usd(k.period_spent_usd)} of ${usd(k.budget_usd)} / ${k.period}`,
           Console.budgetBar(k.period_spent_usd, k.budget_usd))
      : el("span", { class: "muted", text: k.period ? `${usd(k.period_spent_usd)} this ${k.period}` : "no budget" });
    const revoke = el("button", { type: "button", class: "danger revoke", text: "Revoke",
                                  "aria-label": `Revoke key ${k.name}` });
    revoke.addEventListener("click", () => {
      if (revoke.dataset.armed !== "1") {  // a second click confirms (no blocking dialogs)
        revoke.dataset.armed = "1";
        revoke.textContent = "Confirm revoke";
        return;
      }
      guarded($("keys-error"), async () => { await call("DELETE", `/admin/keys/${encodeURIComponent(k.id)}`); await loadKeys(); });
    });
    const edit = el("button", { type: "button", class: "edit", text: "Edit", "aria-label": `Edit key ${k.name}`,
                                onclick: () => openEdit(k) });
    return el("tr", { "data-key": k.id, "data-name": k.name },
      el("td", {}, el("strong", { text: k.name }), el("div", { class: "muted", text: `${k.id} · …${k.hint}` })),
      el("td", { text: limits(k) }),
      el("td", { class: "period" }, period),
      el("td", { class: "num requests", text: num(k.requests) }),
      el("td", { class: "num", text: `${num(k.input_tokens)} / ${num(k.output_tokens)}` }),
      el("td", { class: "num spent", text: usd(k.spent_usd) }),
      el("td", { text: k.expires_at ? when(k.expires_at) : "never" }),
      el("td", { class: "actions" }, edit, revoke));
  }

  async function loadKeys() {
    await guarded($("keys-error"), async () => {
      const rows = await call("GET", "/admin/keys");
      const body = $("keys-table").querySelector("tbody");
      body.replaceChildren(...rows.map(keyRow));
      if (!rows.length) body.append(el("tr", {}, el("td", { colspan: "8", class: "muted", text: "No keys yet." })));
      Console.sizeBars(body);
    });
  }

  function pct(window) {
    if (!window || window.utilization === null || window.utilization === undefined) return "–";
    return `${Math.round(window.utilization * 100)}%`;
  }

  function accountRow(a) {
    const health = a.healthy
      ? el("span", { class: "pill ok", text: a.available ? "healthy" : "healthy, not available" })
      : el("span", { class: "pill bad", text: a.problem || "unhealthy" });
    const cooldown = a.cooldown ? el("span", { class: "pill warn", text: `until ${when(a.cooldown.until)} (${a.cooldown.reason})` }) : "–";
    const refreshButton = el("button", { type: "button", class: "refresh", text: "Refresh now",
                                         "aria-label": `Refresh account ${a.name} now` });
    refreshButton.addEventListener("click", () => guarded($("accounts-error"), async () => {
      await call("POST", `/admin/accounts/${encodeURIComponent(a.name)}/refresh`);
      await loadAccounts();
    }));
    const remove = el("button", { type: "button", class: "danger remove", text: "Remove",
                                  "aria-label": `Remove account ${a.name}` });
    remove.addEventListener("click", () => {
      if (remove.dataset.armed !== "1") { remove.dataset.armed = "1"; remove.textContent = "Confirm remove"; return; }
      guarded($("accounts-error"), async () => {
        await call("DELETE", `/admin/accounts/${encodeURIComponent(a.name)}`);
        await loadAccounts();
      });
    });
    const actions = el("td", { class: "actions" });
    if (a.kind === "oauth" || a.kind === "claude_cli") actions.append(refreshButton);
    // The implicit "default" (no accounts configured: the CLI's login or AUTH__API_KEY) is no file to remove.
    if (!(a.kind === "claude_cli" && a.name === "default")) actions.append(remove);
    return el("tr", { "data-account": a.name },
      el("td", {}, el("strong", { text: a.name })),
      el("td", { text: a.kind }),
      el("td", { text: a.subscription_type || "–" }),
      el("td", {}, health),
      el("td", {}, cooldown),
      el("td", { class: "num", text: pct(a.quota && a.quota["5h"]) }),
      el("td", { class: "num", text: pct(a.quota && a.quota["7d"]) }),
      el("td", { text: a.expires_at ? when(a.expires_at) : "–" }),
      el("td", { text: a.refreshed_at ? when(a.refreshed_at) : "–" }),
      actions);
  }

  async function loadAccounts() {
    await guarded($("accounts-error"), async () => {
      const rows = await call("GET", "/admin/accounts");
      $("accounts-table").querySelector("tbody").replaceChildren(...rows.map(accountRow));
    });
  }

  function openEdit(k) {
    editing = k;
    $("edit-title").textContent = `Edit key ${k.name}`;
    $("edit-rpm").value = k.rpm || "";
    $("edit-tpm").value = k.tpm || "";
    $("edit-budget").value = k.budget_usd || "";
    $("edit-period").value = k.period || "";
    $("edit-expires").value = dateValue(k.expires_at);
    $("edit-accounts").value = (k.accounts || []).join(", ");
    showError($("edit-error"), null);
    $("edit").showModal();
  }

  async function saveEdit(event) {
    event.preventDefault();
    const k = editing;
    const body = { rpm: optInt("edit-rpm"), tpm: optInt("edit-tpm"), budget_usd: optNum("edit-budget"),
                   period: $("edit-period").value || null, expires_at: optDate("edit-expires"),
                   accounts: list("edit-accounts") };
    await guarded($("edit-error"), async () => {
      await call("PATCH", `/admin/keys/${encodeURIComponent(k.id)}`, body);
      $("edit").close();
      await loadKeys();
      const button = document.querySelector(`tr[data-key="${k.id}"] button.edit`);
      if (button) button.focus();
    });
  }

  async function createKey(event) {
    event.preventDefault();
    const body = { name: $("new-name").value.trim(), accounts: list("new-accounts") };
    for (const [field, value] of [["rpm", optInt("new-rpm")], ["tpm", optInt("new-tpm")],
                                  ["budget_usd", optNum("new-budget")], ["expires_at", optDate("new-expires")]]) {
      if (value !== null) body[field] = value;
    }
    if (body.budget_usd !== undefined && $("new-period").value) body.period = $("new-period").value;
    await guarded($("create-error"), async () => {
      const made = await call("POST", "/admin/keys", body);
      $("newkey-name").textContent = made.name;
      $("newkey-value").value = made.key;
      Console.renderSnippets($("newkey-snippets"), made.key);
      $("newkey").classList.remove("hidden");
      $("create-form").reset();
      $("newkey-copy").focus();
      await loadKeys();
    });
  }

  function forgetNewKey() {
    $("newkey-value").value = "";
    $("newkey-snippets").replaceChildren();
    $("newkey").classList.add("hidden");
    $("new-name").focus();
  }

  async function addApiKeyAccount(event) {
    event.preventDefault();
    await guarded($("account-form-error"), async () => {
      await call("POST", "/admin/accounts", { name: $("apikey-name").value.trim(), api_key: $("apikey-value").value });
      $("apikey-form").reset();
      await loadAccounts();
    });
  }

  async function startOAuth(event) {
    event.preventDefault();
    await guarded($("account-form-error"), async () => {
      const started = await call("POST", "/admin/oauth/start", { name: $("oauth-name").value.trim() });
      loginId = started.login_id;
      $("oauth-link").href = started.url;
      $("oauth-finish-form").classList.remove("hidden");
      $("oauth-link").focus();
    });
  }

  async function finishOAuth(event) {
    event.preventDefault();
    await guarded($("account-form-error"), async () => {
      await call("POST", "/admin/oauth/finish", { login_id: loginId, pasted: $("oauth-code").value.trim() });
      loginId = null;
      $("oauth-finish-form").reset();
      $("oauth-finish-form").classList.add("hidden");
      $("oauth-start-form").reset();
      await loadAccounts();
    });
  }

  document.addEventListener("DOMContentLoaded", async () => {
    $("create-form").addEventListener("submit", createKey);
    $("newkey-copy").addEventListener("click", () => Console.copy($("newkey-value").value, $("newkey-copy")));
    $("newkey-done").addEventListener("click", forgetNewKey);
    $("edit-form").addEventListener("submit", saveEdit);
    $("edit-cancel").addEventListener("click", () => $("edit").close());
    $("apikey-form").addEventListener("submit", addApiKeyAccount);
    $("oauth-start-form").addEventListener("submit", startOAuth);
    $("oauth-finish-form").addEventListener("submit", finishOAuth);
    const signedOutHere = () => { forgetNewKey(); signedOut(); };
    await Console.session("/admin/session", "token", signedIn, signedOutHere);
    document.body.dataset.ready = "1";
  });
})();
