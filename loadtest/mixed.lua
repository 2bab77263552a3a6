-- wrk request mix for lastclick: many partners, campaigns and utm_term
-- values; a share of returning visitors (an earlier lc_attr cookie), bots
-- and HEAD requests. LC_PARTNERS, LC_COOKIE and LC_DELAY_MS come from
-- loadtest/run.
local partners = tonumber(os.getenv("LC_PARTNERS") or "100")
local cookie = os.getenv("LC_COOKIE") or ""
local browser = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"

math.randomseed(os.time())

-- A fixed offered rate: each connection waits LC_DELAY_MS after an answer
-- before it sends again, so connections / delay sets the rate.
local delay_ms = tonumber(os.getenv("LC_DELAY_MS") or "0")
if delay_ms > 0 then
  delay = function()
    return delay_ms
  end
end

request = function()
  local roll = math.random(100)
  local p = math.random(partners)
  local path
  if roll <= 60 then
    path = "/r/p" .. p .. "/c" .. math.random(3) .. "?utm_term=t" .. math.random(50)
  else
    path = "/r/p" .. p .. "?utm_source=newsletter"
  end
  local headers = { ["User-Agent"] = browser }
  if roll % 10 == 0 then
    headers["User-Agent"] = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
  end
  if roll % 4 == 0 and cookie ~= "" then
    headers["Cookie"] = "_ga=GA1.2.3.4; lc_attr=" .. cookie
  end
  local method = "GET"
  if roll % 20 == 1 then
    method = "HEAD"
  end
  return wrk.format(method, path, headers)
end
