-- Counts the clicks of one batch (on one slot) once, however often the
-- batch is sent: the batch marker, named by a digest of the click ids and
-- kept a day (longer than any retry), makes a resent batch a no-op.
-- Increments are summed per counter before they are applied.
-- KEYS: the batch marker, then two per click: day counter hash, visitors
-- HyperLogLog. ARGV, three per click: counter field, visitor id, counters'
-- expiry (unix s).
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', 86400) then return 0 end
local increments, members, expiry = {}, {}, {}
for i = 0, (#KEYS - 1) / 2 - 1 do
  local counters, visitors = KEYS[2 * i + 2], KEYS[2 * i + 3]
  local field = ARGV[3 * i + 1]
  increments[counters] = increments[counters] or {}
  increments[counters][field] = (increments[counters][field] or 0) + 1
  members[visitors] = members[visitors] or {}
  table.insert(members[visitors], ARGV[3 * i + 2])
  expiry[counters] = ARGV[3 * i + 3]
  expiry[visitors] = ARGV[3 * i + 3]
end
for counters, fields in pairs(increments) do
  for field, n in pairs(fields) do redis.call('HINCRBY', counters, field, n) end
end
for visitors, list in pairs(members) do
  for first = 1, #list, 500 do
    redis.call('PFADD', visitors, unpack(list, first, math.min(first + 499, #list)))
  end
end
for key, at in pairs(expiry) do redis.call('EXPIREAT', key, at) end
return 1
