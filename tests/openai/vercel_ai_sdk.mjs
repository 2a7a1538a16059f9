// The Vercel AI SDK (`ai` 6 + `@ai-sdk/openai` 3) against ccproxy, with the OpenAI provider's
// defaults: the Responses API with `store` on, so from the second step on it refers to earlier
// output by `item_reference`. Run by tests/openai/test_vercel_ai_sdk.py:
//
//   CCPROXY_BASE_URL=http://127.0.0.1:PORT/api/v1 CCPROXY_API_KEY=... TAG=... node vercel_ai_sdk.mjs
//
// A tool loop of three steps with generateText, then with streamText: the prompt makes the fake
// upstream call `lookup`; the first result asks for a second call; the second ends the loop.
// Prints one JSON line: per run its steps, text and what the SDK sent (item_reference or not).
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const sent = [];
const openai = createOpenAI({
  baseURL: process.env.CCPROXY_BASE_URL,
  apiKey: process.env.CCPROXY_API_KEY,
  // Only to observe what the SDK sends; the request goes out unchanged.
  fetch: async (url, init) => {
    if (init?.body) sent.push(JSON.parse(init.body));
    return fetch(url, init);
  },
});

function tools(run) {
  return {
    lookup: tool({
      description: "Look a word up",
      inputSchema: z.object({ q: z.string() }),
      execute: async ({ q }) =>
        q === "first" ? `${run} result one [[fake:call=lookup?q=second]]` : `${run} result two`,
    }),
  };
}

function summary(run, steps, text, from) {
  const bodies = sent.slice(from);
  return {
    run,
    steps: steps.map((s) => ({
      finishReason: s.finishReason,
      toolCalls: s.toolCalls.map((c) => ({ name: c.toolName, input: c.input })),
      text: s.text,
      responseId: s.response?.id ?? null,
    })),
    text,
    requests: bodies.length,
    stores: bodies.map((b) => b.store ?? null),
    itemReferences: bodies.map((b) => (Array.isArray(b.input) ? b.input : []).filter((i) => i.type === "item_reference").length),
  };
}

const tag = process.env.TAG ?? "vercel";
const model = openai("claude-sonnet-4-5");
const out = [];

{
  const run = `${tag}-generate`;
  const from = sent.length;
  const result = await generateText({
    model,
    prompt: `${run} [[fake:call=lookup?q=first]]`,
    tools: tools(run),
    stopWhen: stepCountIs(5),
  });
  out.push(summary(run, result.steps, result.text, from));
}

{
  const run = `${tag}-stream`;
  const from = sent.length;
  const result = streamText({
    model,
    prompt: `${run} [[fake:call=lookup?q=first]]`,
    tools: tools(run),
    stopWhen: stepCountIs(5),
  });
  let streamed = "";
  for await (const delta of result.textStream) streamed += delta;
  const steps = await result.steps;
  const s = summary(run, steps, await result.text, from);
  s.streamed = streamed;
  out.push(s);
}

console.log(JSON.stringify(out));
