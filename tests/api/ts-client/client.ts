// A client generated from api/openapi.yaml (openapi-typescript) and called
// through openapi-fetch: submit the first job, wait for it, read its metric.
//   NPPD_URL=http://127.0.0.1:PORT node build/client.js
import createClient from "openapi-fetch";
import type { paths } from "./schema.js";

const client = createClient<paths>({ baseUrl: process.env.NPPD_URL });

async function main(): Promise<void> {
  const job = {
    inputs: ["The capital of Spain is", "The capital of Italy is"],
    branch: [{ match: "**/a1", split: true }],
    which: [{ match: "**/a1/**", input: 1 }],
    outputs: { top_k: 3, baselines: true },
    metric: { type: "logit_diff" as const, target: " Madrid", baseline: " Rome" },
  };
  const sub = await client.POST("/v1/jobs", { body: job, params: { query: { wait: 0 } } });
  if (sub.error || !sub.data) throw new Error(`submit: ${JSON.stringify(sub.error)}`);
  const id: string = sub.data.id;
  for (let i = 0; i < 600; i++) {
    const got = await client.GET("/v1/jobs/{id}", { params: { path: { id } } });
    if (got.error || !got.data) throw new Error(`get: ${JSON.stringify(got.error)}`);
    if (got.data.state === "done") {
      const m = got.data.result?.metric;
      if (!m || typeof m.mean !== "number") throw new Error("no metric in the result");
      console.log(JSON.stringify({ id, state: got.data.state, metric: m.mean, type: m.type }));
      return;
    }
    if (got.data.state === "failed" || got.data.state === "cancelled") throw new Error(got.data.state);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("the job never ended");
}

main().catch((e) => {
  console.error(String(e));
  process.exit(1);
});
