-- wrk script for `make bench`: POST a fixed JSON body and print one machine-readable summary line.
-- Body and headers come from the environment (BENCH_BODY, BENCH_HEADERS as a flat JSON object of strings)
-- so the Python side never has to template Lua.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or "{}"
wrk.headers["Content-Type"] = "application/json"

local raw = os.getenv("BENCH_HEADERS") or "{}"
for name, value in string.gmatch(raw, '"([^"]+)"%s*:%s*"([^"]*)"') do
  wrk.headers[name] = value
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,"max_us":%.0f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
