-- wrk script for bench/load: POST /v1/jobs?wait=60 with a job on the tiny
-- model. MODE=cached repeats one job (every value comes from the cache);
-- MODE=uncached gives every request its own token ids (nothing cached).
local mode = os.getenv("MODE") or "cached"
local counter = 0
local thread_id = 0

function setup(thread)
  thread:set("tid", thread_id)
  thread_id = thread_id + 1
end

local function body(a, b)
  return string.format('{"inputs": [[%s], [%s]], "preset": {"type": "activation_patch", "node": "a1.head"}, "outputs": {"top_k": 3}}', a, b)
end

function request()
  local a, b = "464, 3139, 286, 8602, 318, 11, 290", "464, 3139, 286, 8031, 318, 11, 290"
  if mode == "uncached" then
    counter = counter + 1
    local base = (tid * 100003 + counter * 7919) % 45000 + 1
    a = string.format("%d, %d, %d, %d, %d, %d, %d", base, base + 1, base + 2, base + 3, base + 4, base + 5, base + 6)
    b = string.format("%d, %d, %d, %d, %d, %d, %d", base + 9, base + 1, base + 2, base + 3, base + 4, base + 5, base + 6)
  end
  return wrk.format("POST", "/v1/jobs?wait=60", {["Content-Type"] = "application/json"}, body(a, b))
end

function done(summary, latency, requests)
  local non200 = summary.errors.status
  io.write(string.format("%s: %d jobs in %.1f s = %.1f jobs/s; latency p50 %.1f ms, p99 %.1f ms; non-200: %d, socket errors: %d\n",
    mode, summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, non200,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
