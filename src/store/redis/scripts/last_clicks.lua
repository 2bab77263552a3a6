-- Keeps each visitor's latest clicks, newest first, as
-- `time:click id,time:click id,…` (at most 20), whatever order clicks are
-- written in: the first is the visitor's last click, the rest its history
-- for the attribution explanation. A value of one entry (as earlier
-- versions wrote it) reads the same. KEYS: visitor keys. ARGV, three per
-- key: click time, click id, expiry (unix s) of this click.
local MAX = 20
for i = 1, #KEYS do
  local at, id = tonumber(ARGV[3 * i - 2]), ARGV[3 * i - 1]
  local window = tonumber(ARGV[3 * i]) - at
  local stored = redis.call('GET', KEYS[i]) or ''
  -- A batch written again (its outcome was unknown) adds nothing.
  if not string.find(',' .. stored, ':' .. id, 1, true) then
    local entries, placed = {}, false
    for entry in string.gmatch(stored, '[^,]+') do
      local t = tonumber(string.match(entry, '^(%d+):'))
      if t then
        -- Before entries of the same second: the later write wins, as
        -- the last click always did.
        if not placed and t <= at then
          entries[#entries + 1] = at .. ':' .. id
          placed = true
        end
        entries[#entries + 1] = entry
      end
    end
    if not placed then
      entries[#entries + 1] = at .. ':' .. id
    end
    while #entries > MAX do
      entries[#entries] = nil
    end
    local newest = tonumber(string.match(entries[1], '^(%d+):'))
    redis.call('SET', KEYS[i], table.concat(entries, ','), 'EXAT', newest + window)
  end
end
return 1
