-- Argo CD health of a ramify.dev DatabaseBranch (argocd-cm key
-- resource.customizations.health.ramify.dev_DatabaseBranch). Argo CD runs it with
-- gopher-lua (Lua 5.1), `obj` being the live object.
--
-- Reasons of a Ready=False condition that waiting will not fix: the spec (or the parent
-- it names) has to change first, so Argo CD should say Degraded instead of waiting for
-- its progress deadline. Any other Ready=False reason is progress the operator retries.
local permanent_reasons = {
  InvalidForkPoint = true,
  InvalidSpec = true,
  ParentNotFound = true,
  ParentNotShared = true,
  TimelineLost = true,
  UnsupportedPostgresVersion = true,
}

local hs = {}

local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

-- "Reason: message", or whichever of the two exists.
local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  end
  if message ~= "" then
    return message
  end
  if reason ~= "" then
    return reason
  end
  return fallback
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ramify operator to pick up the branch"
  return hs
end

-- A status written for an older spec says nothing about the current one (an invalid
-- spec that was just fixed still reads Failed until the operator catches up).
local generation = obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ramify operator to observe generation " .. generation
  return hs
end

local ready = condition(status, "Ready")
local phase = status.phase

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = describe(ready, "The branch failed")
  return hs
end

if ready ~= nil and ready.status == "False" and permanent_reasons[ready.reason] then
  hs.status = "Degraded"
  hs.message = describe(ready, ready.reason)
  return hs
end

if phase == "Deleting" then
  hs.status = "Progressing"
  hs.message = describe(ready, "Deleting")
  return hs
end

if phase == nil or phase == "Pending" or phase == "Creating" then
  hs.status = "Progressing"
  hs.message = describe(ready, "Creating the branch")
  return hs
end

-- A suspended compute is the normal state of an idle branch: it wakes on the next
-- connection, so the branch is as usable as with a running one.
local compute_state = nil
if status.compute ~= nil then
  compute_state = status.compute.state
end
local suspended = phase == "Ready" and compute_state == "Suspended"

if (ready ~= nil and ready.status == "True") or suspended then
  hs.status = "Healthy"
  if compute_state ~= nil then
    hs.message = "Ready, compute " .. compute_state
  else
    hs.message = "Ready"
  end
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for condition Ready")
return hs
