-- wrk script for bench/webhook_load.py: each wrk thread posts its own file of signed, encrypted
-- callbacks (one "query<TAB>body" a line, every event distinct) and counts what it sent and got.
-- wrk -s bench/webhook_load.lua URL -- DIR
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  queries, bodies = {}, {}
  for line in io.lines(args[1] .. "/requests-" .. id .. ".txt") do
    local query, body = line:match("^([^\t]*)\t(.*)$")
    queries[#queries + 1] = query
    bodies[#bodies + 1] = body
  end
  size = #bodies
  sent, ok, refused = 0, 0, 0
  headers = { ["Content-Type"] = "text/xml" }
end

function request()
  sent = sent + 1
  local i = (sent - 1) % size + 1
  return wrk.format("POST", "/wecom/callback?" .. queries[i], headers, bodies[i])
end

function response(status, _, _)
  if status == 200 then ok = ok + 1 else refused = refused + 1 end
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    io.write(string.format("thread %d sent %d ok %d refused %d size %d\n", thread:get("id"), thread:get("sent"),
      thread:get("ok"), thread:get("refused"), thread:get("size")))
  end
  io.write(string.format("p50_us %d p99_us %d max_us %d\n", latency:percentile(50), latency:percentile(99),
    latency.max))
end
