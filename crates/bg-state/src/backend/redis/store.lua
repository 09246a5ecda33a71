-- Every change bluegreen makes to an app in Redis, as one atomic script.
--
-- KEYS[1] state hash   bg:{app}:state
-- KEYS[2] history      bg:{app}:history   (a capped stream, field "e" = JSON event)
-- KEYS[3] gates hash   bg:{app}:gates     (gate id -> JSON presence)
-- KEYS[4], KEYS[5]     optional legacy keys lb-status-<blue id>, lb-status-<green id>,
--                      given by a store opened with a legacy mirror
-- ARGV[1] operation, ARGV[2] change channel, ARGV[3] history cap, ARGV[4] highest
-- generation or fence allowed, then per operation.
--
-- Every check happens before the first write: a refused call writes nothing.
-- Optional string arguments are passed as "" for "none".
-- Reply: { status, detail, now_ms, field, value, field, value, ... } where the
-- pairs are the state hash after the call (or the gates hash for presence).

local S, H, G = KEYS[1], KEYS[2], KEYS[3]
local op, channel, cap, ceiling = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function num(n) return string.format('%d', n) end
local function opt(s) if s == '' then return nil end return s end
local function field(f)
  local v = redis.call('HGET', S, f)
  if v == false then return nil end
  return v
end

local function reply(status, detail, key, extra)
  local r = { status, detail or '', num(now) }
  local all = redis.call('HGETALL', key or S)
  for i = 1, #all do r[#r + 1] = all[i] end
  for i = 1, #(extra or {}) do r[#r + 1] = extra[i] end
  return r
end

-- A version by the rule of store::check_version: 1 to 128 characters, not
-- one of them whitespace or a control character (Rust's char::is_whitespace
-- and char::is_control, so the non-ASCII ones too, matched as UTF-8).
local function valid_version(v)
  if v == '' or string.find(v, '[%c%s]') then return false end
  for _, bad in ipairs({ '\194[\128-\160]', '\225\154\128', '\226\128[\128-\138]',
      '\226\128[\168\169\175]', '\226\129\159', '\227\128\128' }) do
    if string.find(v, bad) then return false end
  end
  local _, chars = string.gsub(v, '[^\128-\191]', '')
  return chars <= 128
end

-- Refuse to build on keys we cannot read: report, touch nothing. Checked
-- before the first write of every operation, because Redis does not undo a
-- script's earlier writes when a later command fails.
local function corrupt()
  local types = { [H] = 'stream', [G] = 'hash', [S] = 'hash' }
  for key, want in pairs(types) do
    local t = redis.call('TYPE', key)['ok']
    if t ~= 'none' and t ~= want then return reply('corrupt', key .. ' is a ' .. t) end
  end
  local function digits(f, optional)
    local v = field(f)
    if v == nil then return optional end
    return string.match(v, '^[0-9]+$') ~= nil
  end
  for _, f in ipairs({ 'high_water', 'fence_seq', 'lease_fence', 'lease_acquired', 'lease_expires' }) do
    if not digits(f, true) then return reply('corrupt', f) end
  end
  if field('lease_holder') ~= nil and field('lease_fence') == nil then return reply('corrupt', 'lease_fence') end
  local blue_id, green_id = field('mirror_blue'), field('mirror_green')
  if (blue_id == nil) ~= (green_id == nil) then return reply('corrupt', 'mirror_green') end
  for f, id in pairs({ mirror_blue = blue_id, mirror_green = green_id }) do
    if not string.match(id, '^[A-Za-z0-9._-]+$') or string.len(id) > 64 then return reply('corrupt', f) end
  end
  local g, a = field('generation'), field('active')
  if g == nil and a == nil then return nil end
  if g == nil or not string.match(g, '^[1-9][0-9]*$') then return reply('corrupt', 'generation') end
  if a ~= 'blue' and a ~= 'green' then return reply('corrupt', 'active') end
  if field('lc_actor') == nil then return reply('corrupt', 'lc_actor') end
  if not digits('lc_at', false) then return reply('corrupt', 'lc_at') end
  if not digits('lc_fence', true) then return reply('corrupt', 'lc_fence') end
  for _, c in ipairs({ 'blue', 'green' }) do
    if field(c .. '_version') ~= nil then
      local phase = field(c .. '_phase')
      if phase ~= 'deploying' and phase ~= 'deployed' then return reply('corrupt', c .. '_phase') end
      if not digits(c .. '_at', false) then return reply('corrupt', c .. '_at') end
      if field(c .. '_actor') == nil then return reply('corrupt', c .. '_actor') end
    elseif field(c .. '_phase') ~= nil then
      return reply('corrupt', c .. '_phase')
    end
    local live, rb = field(c .. '_live'), field(c .. '_live_rb')
    if live ~= nil and not valid_version(live) then return reply('corrupt', c .. '_live') end
    if rb ~= nil and (rb ~= '1' or live == nil) then return reply('corrupt', c .. '_live_rb') end
  end
  return nil
end

local function set_opt(f, v)
  if v == '' then redis.call('HDEL', S, f) else redis.call('HSET', S, f, v) end
end

local function live_lease()
  local exp = tonumber(field('lease_expires') or '0') or 0
  if exp > now then return field('lease_fence') end
  return nil
end

-- The lease rule shared by switches and deploy records.
local function check_fence(fence, force)
  if force == '1' then return nil end
  local live = live_lease()
  if fence ~= '' then
    if live ~= nil and live == fence then return nil end
    return reply('stale_fence')
  end
  if live ~= nil then return reply('lease_held', '') end
  return nil
end

local function event(e)
  redis.call('XADD', H, 'MAXLEN', cap, '*', 'e', cjson.encode(e))
end

-- The legacy mirror. Its ids live in the state hash (mirror_blue,
-- mirror_green), so that every writer moves the legacy keys, not only the
-- stores opened with the mirror: those only record the ids, once (an init
-- replaces them). With ids recorded, the keys follow the live colour,
-- `active` (the colour about to be live). Called before anything else the
-- script writes: a key it may not write (on a Cluster, under an ACL) fails
-- the script before the state changed.
local function mirror(replace, active)
  local blue_id, green_id = field('mirror_blue'), field('mirror_green')
  local record = #KEYS >= 5 and (replace or blue_id == nil)
  if record then
    local prefix = string.len('lb-status-')
    blue_id, green_id = string.sub(KEYS[4], prefix + 1), string.sub(KEYS[5], prefix + 1)
  end
  if blue_id ~= nil and green_id ~= nil and active ~= nil then
    redis.call('SET', 'lb-status-' .. blue_id, active == 'blue' and '1' or '0')
    redis.call('SET', 'lb-status-' .. green_id, active == 'blue' and '0' or '1')
  end
  if record then
    redis.call('HSET', S, 'mirror_blue', blue_id, 'mirror_green', green_id)
  end
end

local function publish()
  redis.call('PUBLISH', channel, field('generation') or '')
end

if op == 'read' then
  return reply('ok')

elseif op == 'init' then
  -- 5 active, 6 actor, 7 reason, 8 force, 9 min generation, 10 request id,
  -- 11 the version it runs
  local bad = corrupt(); if bad then return bad end
  local exists = field('generation') ~= nil
  local rid = ARGV[10] or ''
  -- A retry of the init that made this state: done already.
  if exists and rid ~= '' and field('lc_request') == rid and field('active') == ARGV[5] then
    return reply('unchanged')
  end
  if exists and ARGV[8] ~= '1' then return reply('already_init') end
  local held = math.max(tonumber(field('high_water') or '0') or 0, tonumber(field('generation') or '0'))
  local gen = math.max(held + 1, tonumber(ARGV[9]))
  if gen > ceiling then return reply('exhausted', num(gen)) end
  mirror(true, ARGV[5])
  redis.call('HSET', S, 'active', ARGV[5], 'generation', num(gen), 'high_water', num(gen),
    'lc_actor', ARGV[6], 'lc_at', num(now), 'lc_forced', ARGV[8])
  set_opt('lc_reason', ARGV[7]); set_opt('lc_request', rid)
  redis.call('HDEL', S, 'lc_fence')
  -- A known version becomes the one the colour serves live (checked by
  -- the caller by the rule valid_version holds).
  if ARGV[11] ~= '' then
    redis.call('HSET', S, ARGV[5] .. '_live', ARGV[11])
    redis.call('HDEL', S, ARGV[5] .. '_live_rb')
  end
  event({ generation = gen, at_ms = now, actor = ARGV[6], forced = ARGV[8] == '1',
    reason = opt(ARGV[7]), event = 'init', active = ARGV[5] })
  publish()
  return reply('ok')

elseif op == 'switch' then
  -- 5 to, 6 actor, 7 reason, 8 expect, 9 fence, 10 request id, 11 force, 12 rollback,
  -- 13 the version the colour left runs ('' if not known)
  local bad = corrupt(); if bad then return bad end
  if field('generation') == nil then return reply('not_init') end
  local to, expect, fence, rid = ARGV[5], ARGV[8], ARGV[9], ARGV[10]
  local active, gen = field('active'), tonumber(field('generation'))
  if active == to then
    if rid ~= '' and field('lc_request') == rid then return reply('unchanged') end
    if fence ~= '' and field('lc_fence') == fence and (expect == '' or tonumber(expect) + 1 == gen) then
      return reply('unchanged')
    end
  end
  if expect ~= '' and tonumber(expect) ~= gen then return reply('conflict', expect) end
  if active == to then return reply('unchanged') end
  local refused = check_fence(fence, ARGV[11]); if refused then return refused end
  gen = gen + 1
  if gen > ceiling then return reply('exhausted', num(gen)) end
  local high = math.max(gen, tonumber(field('high_water') or '0') or 0)
  mirror(false, to)
  redis.call('HSET', S, 'active', to, 'generation', num(gen), 'high_water', num(high),
    'lc_actor', ARGV[6], 'lc_at', num(now), 'lc_forced', ARGV[11])
  set_opt('lc_reason', ARGV[7]); set_opt('lc_request', rid); set_opt('lc_fence', fence)
  -- The versions served live ({colour}_live, {colour}_live_rb), by the rule
  -- of State::apply_switch_to_live: the colour left without a live version
  -- (data from before they were kept, or a forced init) gets its verified
  -- record's version; a plain switch to a verified record makes it the live
  -- version; a rollback keeps what the colour served and marks the one it
  -- leaves; without a verified record, the colour left gets the version its
  -- gates reported. corrupt() made sure a phase comes with a version.
  local rollback = ARGV[12] == '1'
  if field(active .. '_live') == nil then
    if field(active .. '_phase') == 'deployed' then
      redis.call('HSET', S, active .. '_live', field(active .. '_version'))
    elseif ARGV[13] ~= '' then
      redis.call('HSET', S, active .. '_live', ARGV[13])
    end
  end
  if not rollback and field(to .. '_phase') == 'deployed' then
    redis.call('HSET', S, to .. '_live', field(to .. '_version'))
  end
  redis.call('HDEL', S, to .. '_live_rb')
  if rollback and field(active .. '_live') ~= nil then
    redis.call('HSET', S, active .. '_live_rb', '1')
  end
  event({ generation = gen, at_ms = now, actor = ARGV[6], forced = ARGV[11] == '1',
    reason = opt(ARGV[7]), event = (ARGV[12] == '1') and 'rollback' or 'switch', from = active, to = to })
  publish()
  return reply('ok')

elseif op == 'deploy' then
  -- 5 colour, 6 version, 7 phase, 8 actor, 9 fence, 10 force, 11 request id
  local bad = corrupt(); if bad then return bad end
  if field('generation') == nil then return reply('not_init') end
  local colour, rid = ARGV[5], ARGV[11] or ''
  -- A retry of the record there now: done already, even if its colour went live since.
  if rid ~= '' and field(colour .. '_request') == rid and field(colour .. '_version') == ARGV[6]
      and field(colour .. '_phase') == ARGV[7] then
    return reply('ok')
  end
  if field('active') == colour then return reply('deploy_live') end
  local refused = check_fence(ARGV[9], ARGV[10]); if refused then return refused end
  redis.call('HSET', S, colour .. '_version', ARGV[6], colour .. '_phase', ARGV[7],
    colour .. '_at', num(now), colour .. '_actor', ARGV[8])
  set_opt(colour .. '_request', rid)
  event({ generation = tonumber(field('generation')), at_ms = now, actor = ARGV[8], forced = ARGV[10] == '1',
    event = 'deploy', colour = colour, version = ARGV[6], phase = ARGV[7] })
  publish()
  return reply('ok')

elseif op == 'acquire' then
  -- 5 holder, 6 ttl ms, 7 owner, 8 a fence drawn at random by the caller
  local bad = corrupt(); if bad then return bad end
  local live = live_lease()
  local expires = num(now + tonumber(ARGV[6]))
  if live ~= nil then
    -- The same holder through another credential is someone else.
    if field('lease_holder') ~= ARGV[5] or (field('lease_owner') or '') ~= ARGV[7] then
      return reply('lease_held')
    end
    redis.call('HSET', S, 'lease_expires', expires)
    return reply('ok')
  end
  -- Random, so nobody can guess it; never the fence of the lease before
  -- (fence::next). Nothing orders fences: only equality is checked.
  local fence = tonumber(ARGV[8])
  if not string.match(ARGV[8], '^[1-9][0-9]*$') or fence > ceiling then
    return redis.error_reply('bluegreen: a drawn fence must be 1 to ' .. num(ceiling))
  end
  if ARGV[8] == field('fence_seq') then fence = fence % ceiling + 1 end
  redis.call('HSET', S, 'fence_seq', num(fence), 'lease_holder', ARGV[5], 'lease_fence', num(fence),
    'lease_acquired', num(now), 'lease_expires', expires)
  set_opt('lease_owner', ARGV[7])
  return reply('ok')

elseif op == 'renew' then
  -- 5 fence, 6 ttl ms
  local bad = corrupt(); if bad then return bad end
  local live = live_lease()
  if live == nil or live ~= ARGV[5] then return reply('stale_fence') end
  redis.call('HSET', S, 'lease_expires', num(now + tonumber(ARGV[6])))
  return reply('ok')

elseif op == 'release' then
  -- 5 fence
  local bad = corrupt(); if bad then return bad end
  local live = live_lease()
  if live == nil or live ~= ARGV[5] then return reply('not_released') end
  redis.call('HDEL', S, 'lease_holder', 'lease_fence', 'lease_owner', 'lease_acquired', 'lease_expires')
  return reply('released')

elseif op == 'break' then
  -- 5 actor, 6 reason
  local bad = corrupt(); if bad then return bad end
  local live = live_lease()
  if live == nil then return reply('none') end
  local broken = { 'broken_holder', field('lease_holder'), 'broken_fence', live,
    'broken_acquired', field('lease_acquired'), 'broken_expires', field('lease_expires') }
  if field('lease_owner') ~= nil then
    broken[#broken + 1] = 'broken_owner'
    broken[#broken + 1] = field('lease_owner')
  end
  redis.call('HDEL', S, 'lease_holder', 'lease_fence', 'lease_owner', 'lease_acquired', 'lease_expires')
  event({ generation = tonumber(field('generation') or '0') or 0, at_ms = now, actor = ARGV[5],
    forced = true, reason = opt(ARGV[6]), event = 'lease_broken', holder = broken[2], fence = tonumber(live) })
  return reply('broken', '', S, broken)

elseif op == 'presence' then
  -- 5 gate id, 6 presence JSON, 7 ttl ms
  local bad = corrupt(); if bad then return bad end
  local p = cjson.decode(ARGV[6])
  -- A retry of the report there now (same request id, not lapsed): done already.
  local rid = p.request_id
  if type(rid) == 'string' then
    local ok, old = pcall(cjson.decode, redis.call('HGET', G, ARGV[5]) or 'null')
    if ok and type(old) == 'table' and old.request_id == rid and (tonumber(old.expires_at_ms) or 0) > now then
      return reply('ok', '', G)
    end
  end
  p.seen_at_ms = now
  p.expires_at_ms = now + tonumber(ARGV[7])
  local all = redis.call('HGETALL', G)
  for i = 1, #all, 2 do
    local ok, old = pcall(cjson.decode, all[i + 1])
    if not ok or type(old) ~= 'table' or (tonumber(old.expires_at_ms) or 0) <= now then
      redis.call('HDEL', G, all[i])
    end
  end
  redis.call('HSET', G, ARGV[5], cjson.encode(p))
  -- A gate opened with the mirror reports its presence from the start:
  -- this records the ids, and sets the keys, before any change is made.
  if #KEYS >= 5 and field('mirror_blue') == nil then mirror(false, field('active')) end
  return reply('ok', '', G)

elseif op == 'presences' then
  return reply('ok', '', G)
end

return redis.error_reply('bluegreen: unknown operation ' .. tostring(op))
