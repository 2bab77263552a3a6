-- Stores click records. KEYS: click keys. ARGV, two per key: the record,
-- its expiry (unix s).
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'EXAT', ARGV[2 * i])
end
return 1
