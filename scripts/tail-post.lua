-- wrk script for scripts/tail-latency.sh: POST /events with unique ~1 KiB
-- bodies (a per-thread counter and a per-run nonce, so nothing is
-- deduplicated), and a machine-readable summary line at the end.
--   wrk ... -s scripts/tail-post.lua URL/events -- KEY NONCE
-- Without arguments it only prints the summary (for GET /status).

local threads = {}
local counter = 1

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local headers, nonce, n, pad, post  -- tid: set by setup()

function init(args)
   post = args[1] ~= nil
   if not post then return end
   headers = {
      ["Authorization"] = "Bearer " .. args[1],
      ["Content-Type"] = "application/json",
   }
   nonce = args[2] or tostring(os.time())
   n = 0
   pad = string.rep("x", 900)
end

function request()
   if not post then return wrk.request() end
   n = n + 1
   local body = '{"event_type":"load.p' .. (n % 8) .. '","source":"wrk","payload":{"n":' .. n ..
      ',"t":' .. tid .. ',"nonce":"' .. nonce .. '","order":{"id":"ord_' .. n ..
      '","total":"19.99"},"pad":"' .. pad .. '"}}'
   return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'TAIL {"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p95_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(95),
      latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean))
end
