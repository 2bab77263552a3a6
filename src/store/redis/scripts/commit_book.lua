-- Applies a batch's (or payout's) changes to a partner's book, if the
-- book is still at the version read.
-- KEYS: version, book, customers, conversions, history, ledger, inbox,
-- payouts, payout ids, outbox.
-- ARGV: expected version, events taken off the inbox, book JSON, then
-- counted groups: customers (id, JSON), cells (cell, JSON), history
-- changes in order (`+` score member, or `-` member), payouts (id, JSON);
-- the webhook events (their bodies, one a line, or '' for none); then the ledger
-- entries.
-- Answers 1 applied, -1 the book moved.
--
-- Each group is written with as few commands as its size allows (an
-- `HSET` of many fields, a `ZADD` of a run of additions): a command
-- called from Lua costs Redis a lookup and a client round of its own,
-- and one command per record was most of Redis's time in the worker.
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return -1 end
if tonumber(ARGV[2]) > 0 then redis.call('LTRIM', KEYS[7], ARGV[2], -1) end
redis.call('SET', KEYS[2], ARGV[3])
-- `command key ARGV[from..to]`, in calls of at most 1000 arguments (even,
-- so that pairs stay whole; Lua's stack holds a few thousand).
local function batched(command, key, from, to)
  while from <= to do
    local last = math.min(to, from + 999)
    redis.call(command, key, unpack(ARGV, from, last))
    from = last + 1
  end
end
local i = 4
for _, key in ipairs({KEYS[3], KEYS[4]}) do
  local n = tonumber(ARGV[i]); i = i + 1
  batched('HSET', key, i, i + 2 * n - 1); i = i + 2 * n
end
local changes = tonumber(ARGV[i]); i = i + 1
local adds, removes = {}, {}
local function flush()
  if #adds > 0 then redis.call('ZADD', KEYS[5], unpack(adds)); adds = {} end
  if #removes > 0 then redis.call('ZREM', KEYS[5], unpack(removes)); removes = {} end
end
for _ = 1, changes do
  if ARGV[i] == '+' then
    if #removes > 0 or #adds >= 1000 then flush() end
    adds[#adds + 1] = ARGV[i + 1]; adds[#adds + 1] = ARGV[i + 2]; i = i + 3
  else
    if #adds > 0 or #removes >= 1000 then flush() end
    removes[#removes + 1] = ARGV[i + 1]; i = i + 2
  end
end
flush()
local payouts = tonumber(ARGV[i]); i = i + 1
for _ = 1, payouts do
  redis.call('HSET', KEYS[8], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[9], 0, ARGV[i])
  i = i + 2
end
-- The step's webhook events, one stream entry for them all.
if ARGV[i] ~= '' then redis.call('XADD', KEYS[10], '*', 'e', ARGV[i]) end
i = i + 1
batched('RPUSH', KEYS[6], i, #ARGV)
redis.call('INCR', KEYS[1])
return 1
