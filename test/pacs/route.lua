-- Route what a modality stores (CR or DX) to the CheXNet DICOM node; never what the node sends back.
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags["Modality"]
  if origin["RequestOrigin"] == "DicomProtocol" and origin["RemoteAet"] ~= "CHEXNET"
     and (modality == "CR" or modality == "DX") then
    SendToModality(instanceId, "chexnet")
  end
end
