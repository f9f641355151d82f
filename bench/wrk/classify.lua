-- wrk script: POST /classify with one image, as multipart (default) or JSON base64.
-- usage: wrk -s bench/wrk/classify.lua http://127.0.0.1:8000 -- <image file> [multipart|json] [classifier]
local image_path, shape, classifier

local function read_file(path)
  local file = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local data = file:read("*a")
  file:close()
  return data
end

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(data)
  return ((data:gsub(".", function(x)
    local bits, byte = "", x:byte()
    for i = 8, 1, -1 do bits = bits .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and "1" or "0") end
    return bits
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b64chars:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#data % 3 + 1])
end

function init(args)
  image_path = args[1] or "image.png"
  shape = args[2] or "multipart"
  classifier = args[3]
  local image = read_file(image_path)
  wrk.method = "POST"
  wrk.path = "/classify"
  if shape == "json" then
    local fields = classifier and (', "classifier": "' .. classifier .. '"') or ""
    wrk.body = '{"images": ["' .. base64(image) .. '"], "top_k": 5' .. fields .. "}"
    wrk.headers["Content-Type"] = "application/json"
  else
    local boundary = "----promptservewrk7d93a1"
    local parts = {
      "--" .. boundary,
      'Content-Disposition: form-data; name="images"; filename="image"',
      "Content-Type: application/octet-stream",
      "",
      image,
      "--" .. boundary,
      'Content-Disposition: form-data; name="top_k"',
      "",
      "5",
    }
    if classifier then
      parts[#parts + 1] = "--" .. boundary
      parts[#parts + 1] = 'Content-Disposition: form-data; name="classifier"'
      parts[#parts + 1] = ""
      parts[#parts + 1] = classifier
    end
    parts[#parts + 1] = "--" .. boundary .. "--"
    parts[#parts + 1] = ""
    wrk.body = table.concat(parts, "\r\n")
    wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
  end
end

local errors = 0

function response(status, headers, body)
  if status ~= 200 and errors < 3 then
    errors = errors + 1
    io.stderr:write("HTTP " .. status .. ": " .. body .. "\n")
  end
end
