-- Moves a customer's parked events to its dead letter unless it was
-- claimed: then they are its claimant's, which forgets them once they are
-- in the partner's inbox. KEYS: claim, parked, dead. Answers how many
-- moved, or -1 when the customer is claimed.
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
for _, item in ipairs(items) do redis.call('RPUSH', KEYS[3], item) end
redis.call('DEL', KEYS[2])
return #items
