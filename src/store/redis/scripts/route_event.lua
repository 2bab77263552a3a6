-- Routes a customer's event: the claim if there is one, else the event is
-- parked with the customer. KEYS: claim, parked. ARGV: the parked record.
-- Answers the claim, or '' when parked.
local claim = redis.call('GET', KEYS[1])
if claim then return claim end
redis.call('RPUSH', KEYS[2], ARGV[1])
return ''
