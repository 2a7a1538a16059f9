// The member page at /me: sign in with your own client key; see your limits, spend, requests, approvals.
"use strict";

(() => {
  const { call, el, usd, num, when, showError } = Console;
  const $ = (id) => document.getElementById(id);

  function signedIn(state) {
    Console.setCsrf(state.csrf);
    $("signin").classList.add("hidden");
    $("app").classList.remove("hidden");
    $("nav").classList.remove("hidden");
    Console.renderSnippets($("snippets"), "$CCPROXY_KEY");
    return refresh();
  }

  function signedOut() {
    Console.setCsrf("");
    $("app").classList.add("hidden");
    $("nav").classList.add("hidden");
    $("signin").classList.remove("hidden");
    $("key").focus();
  }

  const guarded = (errorNode, action) => Console.guarded(errorNode, action, signedOut);

  async function loadMine() {
    await guarded($("me-error"), async () => {
      const k = await call("GET", "/me/state");
      $("me-name").textContent = k.name;
      $("me-id").textContent = `${k.id} (…${k.hint})`;
      const parts = [];
      if (k.rpm) parts.push(`${num(k.rpm)} requests/min`);
      if (k.tpm) parts.push(`${num(k.tpm)} tokens/min`);
      if (k.accounts && k.accounts.length) parts.push(`accounts: ${k.accounts.join(", ")}`);
      $("me-limits").textContent = parts.length ? parts.join(" · ") : "none";
      $("me-budget").textContent = k.budget_usd ? `${usd(k.budget_usd)} per ${k.period}` : "none";
      $("me-spent").replaceChildren(el("span", { text: usd(k.period_spent_usd) }),
                                    Console.budgetBar(k.period_spent_usd, k.budget_usd) || "");
      Console.sizeBars($("me-spent"));
      $("me-left").textContent = k.left_usd === null ? "no budget" : usd(k.left_usd);
      $("me-resets").textContent = k.period_ends_at ? when(k.period_ends_at) : "–";
      $("me-total").textContent = `${num(k.requests)} requests, ${num(k.input_tokens)} tokens in, ` +
                                  `${num(k.output_tokens)} out, ${usd(k.spent_usd)}`;
      $("me-expires").textContent = k.expires_at ? when(k.expires_at) : "never";
    });
  }

  // The log API and the permissions service take this page's session for GET reads of our own rows.
  async function loadRequests() {
    await guarded($("requests-error"), async () => {
      const page = await call("GET", "/logs/query?limit=25");
      const rows = page.data.map((r) => el("tr", { "data-request": r.request_id },
        el("td", { text: (r.started_at || "").replace("T", " ").slice(0, 19) }),
        el("td", { text: r.endpoint }),
        el("td", { text: r.model_used || r.model_requested || "–" }),
        el("td", { text: r.mode }),
        el("td", { class: "num", text: r.status }),
        el("td", { class: "num", text: `${num(r.input_tokens)} / ${num(r.output_tokens)}` }),
        el("td", { class: "num", text: usd(r.cost_usd) })));
      const body = $("requests-table").querySelector("tbody");
      body.replaceChildren(...rows);
      if (!rows.length) body.append(el("tr", {}, el("td", { colspan: "7", class: "muted", text: "No requests yet." })));
    });
  }

  async function loadApprovals() {
    await guarded($("approvals-error"), async () => {
      const pending = (await call("GET", "/permissions")).data;
      $("approvals-list").replaceChildren(...pending.map((p) => el("li", { "data-permission": p.id },
        el("strong", { text: p.tool_name }), " ", p.title || JSON.stringify(p.input).slice(0, 120), " · ",
        el("a", { href: "/permissions/ui", text: "decide on the approval page" }))));
      $("approvals-none").classList.toggle("hidden", pending.length > 0);
    });
  }

  function refresh() {
    return Promise.all([loadMine(), loadRequests(), loadApprovals()]);
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const state = await Console.session("/me/session", "key", signedIn, signedOut);
    if (state && !state.keys && !state.signed_in) showError($("signin-error"), new Error("client keys are not set up here (REDIS__URL)"));
    document.body.dataset.ready = "1";
  });
})();
