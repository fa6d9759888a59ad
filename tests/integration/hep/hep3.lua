-- A HEP version 3 dissector for tshark, written for sipsuite's tests
-- (Wireshark 4.0 has none of its own): it walks the chunks ("HEP3", total
-- length, then vendor id, type id, length with the 6-byte chunk header, value)
-- into fields and hands the payload chunk (0x000f) of a SIP packet to
-- Wireshark's SIP dissector.  Use: tshark -X lua_script:hep3.lua
-- -d udp.port==PORT,hep3 ...
local hep3 = Proto("hep3", "HEP version 3")
local F = {
  family = ProtoField.uint8("hep3.family", "IP family"),
  ip_proto = ProtoField.uint8("hep3.ip_proto", "IP protocol"),
  src_ip4 = ProtoField.ipv4("hep3.src_ip4", "IPv4 source"),
  dst_ip4 = ProtoField.ipv4("hep3.dst_ip4", "IPv4 destination"),
  src_ip6 = ProtoField.ipv6("hep3.src_ip6", "IPv6 source"),
  dst_ip6 = ProtoField.ipv6("hep3.dst_ip6", "IPv6 destination"),
  src_port = ProtoField.uint16("hep3.src_port", "Source port"),
  dst_port = ProtoField.uint16("hep3.dst_port", "Destination port"),
  sec = ProtoField.uint32("hep3.sec", "Seconds"),
  usec = ProtoField.uint32("hep3.usec", "Microseconds"),
  proto_type = ProtoField.uint8("hep3.proto_type", "Payload type"),
  capture_id = ProtoField.uint32("hep3.capture_id", "Capture agent id"),
  auth_key = ProtoField.string("hep3.auth_key", "Authentication key"),
  correlation_id = ProtoField.string("hep3.correlation_id", "Correlation id"),
  chunks = ProtoField.uint16("hep3.chunks", "Chunks"),
}
hep3.fields = {F.family, F.ip_proto, F.src_ip4, F.dst_ip4, F.src_ip6, F.dst_ip6, F.src_port,
               F.dst_port, F.sec, F.usec, F.proto_type, F.capture_id, F.auth_key,
               F.correlation_id, F.chunks}
local by_type = {[1] = F.family, [2] = F.ip_proto, [3] = F.src_ip4, [4] = F.dst_ip4,
                 [5] = F.src_ip6, [6] = F.dst_ip6, [7] = F.src_port, [8] = F.dst_port,
                 [9] = F.sec, [10] = F.usec, [11] = F.proto_type, [12] = F.capture_id,
                 [14] = F.auth_key, [17] = F.correlation_id}
local sip = Dissector.get("sip")

function hep3.dissector(tvb, pinfo, tree)
  if tvb:len() < 6 or tvb(0, 4):string() ~= "HEP3" then return 0 end
  local total = tvb(4, 2):uint()
  if total ~= tvb:len() then return 0 end
  local t = tree:add(hep3, tvb(0, total))
  local at, n, payload, ptype = 6, 0, nil, nil
  while at + 6 <= total do
    local vendor, kind, len = tvb(at, 2):uint(), tvb(at + 2, 2):uint(), tvb(at + 4, 2):uint()
    if len < 6 or at + len > total then return 0 end  -- malformed: not ours
    n = n + 1
    if vendor == 0 and len > 6 then
      local value = tvb(at + 6, len - 6)
      if kind == 15 then payload = value
      elseif by_type[kind] then t:add(by_type[kind], value) end
      if kind == 11 then ptype = value:uint() end
    end
    at = at + len
  end
  if at ~= total then return 0 end
  t:add(F.chunks, n)
  pinfo.cols.protocol = "HEP3"
  if payload and ptype == 1 then sip:call(payload:tvb(), pinfo, tree) end
  return total
end

DissectorTable.get("udp.port"):add_for_decode_as(hep3)
