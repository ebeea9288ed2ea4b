-- Argo CD health of a Tradewind TrainingRun, RLRun or Sweep (tradewind.dev/v1alpha1).
--
-- Reads what the operator writes: status.phase, status.conditions and
-- status.observedGeneration (tradewind/api/status.py). A run is a batch workload, read the
-- way Argo CD reads a Job:
--   no status yet, or a status older than the spec   -> Progressing
--   Pending, Running, Restarting                      -> Progressing (Degraded when the
--                                                        pods cannot pull their image)
--   Succeeded                                         -> Healthy
--   Failed                                            -> Degraded
--   Suspended                                         -> Suspended
-- The message is the operator's own: the condition of the current phase.
local hs = {}

local function condition(status, type_)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function message(status, phase)
  local c = condition(status, phase)
  if c == nil or c.message == nil or c.message == "" then
    c = condition(status, "Ready")
  end
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return phase .. ": " .. c.message
  end
  return phase
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Tradewind operator to report a status"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil
    and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on generation " .. generation
    .. " (status is for " .. status.observedGeneration .. ")"
  return hs
end

local phase = status.phase
hs.message = message(status, phase)
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Suspended" then
  hs.status = "Suspended"
elseif phase == "Pending" or phase == "Running" or phase == "Restarting" then
  local ready = condition(status, "Ready")
  if ready ~= nil and (ready.reason == "ImagePullFailure" or ready.reason == "CreateFailed"
        or ready.reason == "PodsRefused") then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
