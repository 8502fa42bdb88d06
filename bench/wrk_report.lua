-- wrk script for the benchmark: optional POST body from a file, results as one JSON line.
--   wrk -s bench/wrk_report.lua URL -- [body.json] ["Header-Name: value"]
-- Without a body file (or with "") the request is a plain GET (the HTTP ceiling, GET /healthz).

function init(args)
   if args[2] ~= nil and args[2] ~= "" then
      local name, value = args[2]:match("^([^:]+):%s*(.*)$")
      wrk.headers[name] = value
   end
   if args[1] ~= nil and args[1] ~= "" then
      local f = assert(io.open(args[1], "rb"))
      wrk.body = f:read("*a")
      f:close()
      wrk.method = "POST"
      wrk.headers["Content-Type"] = "application/json"
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
      '"latency_mean_us":%.1f,"latency_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
