-- Registers a coupon code for a partner unless any partner has it.
-- KEYS: the codes hash, the partner's set of codes. ARGV: the code (upper
-- case), the coupon's JSON. Answers 1 when registered, 0 when taken.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
