-- wrk script: the reference OSS upload event in EventBridge envelope mode, a fresh id per request.
-- PAD=<bytes> pads the data to reach larger events (e.g. 64 KB); the send time travels as the
-- `benchsent` extension (and a ce-benchsent header, which pass-through pipelines forward).
local n = 0
local pad = tonumber(os.getenv("PAD") or "0")
local filler = ""
if pad > 0 then filler = string.rep("x", pad) end
local pre = [[{"specversion":"1.0","id":"]]
local mid = [[","source":"acs.oss","type":"oss:ObjectCreated:PutObject","subject":"acs:oss:cn-hangzhou:1581204543170042:knative/demo.data","time":"2023-02-07T09:52:31.000Z","datacontenttype":"application/json;charset=utf-8","aliyunaccountid":"1581204543170042","aliyunpublishtime":"2023-02-07T09:52:31.526PRC","aliyuneventbusname":"default","aliyunregionid":"cn-hangzhou","aliyunpublishaddr":"10.10.XX.XX","data":{"pad":"]]
local post = [[","eventVersion":"1.0","responseElements":{"requestId":"63E21F5FEE852133319101AD"},"eventSource":"acs:oss","eventTime":"2023-02-07T09:52:31.000Z","requestParameters":{"sourceIPAddress":"XX.XXX.XX.XXX"},"eventName":"ObjectCreated:PutObject","userIdentity":{"principalId":"1118324452360952"},"region":"cn-hangzhou","oss":{"bucket":{"name":"knative","arn":"acs:oss:cn-hangzhou:1581204543170042:knative","virtualBucket":"","ownerIdentity":"1581204543170042"},"ossSchemaVersion":"1.0","object":{"size":225496,"objectMeta":{"mimeType":"application/octet-stream"},"deltaSize":0,"eTag":"B350C082843DAC7E9E634193437EBA30","key":"demo.data"}}}}]]
request = function()
  n = n + 1
  local body = pre .. "bench-" .. tostring(math.random(1, 2^30)) .. "-" .. n .. mid .. filler .. post
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
