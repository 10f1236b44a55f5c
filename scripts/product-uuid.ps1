# Print this Windows server's product_uuid (lower case), the value a field engineer sends to the
# vendor. Docker Desktop's VM cannot see the host's SMBIOS, so install.ps1 writes this value to a
# file that the container reads through CHEXNET_PRODUCT_UUID_FILE.
# Works in Windows PowerShell 5.1 and PowerShell 7; as product-uuid.sh, with WMI in place of the SMBIOS file.
# Usage: .\scripts\product-uuid.ps1 [-OutFile FILE]
[CmdletBinding()]
param([string]$OutFile)
$ErrorActionPreference = 'Stop'

$product = Get-CimInstance -ClassName Win32_ComputerSystemProduct
$value = "$($product.UUID)".Trim().ToLowerInvariant()
if ($value -cnotmatch '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\z') {
    throw "Win32_ComputerSystemProduct reports '$value', which is not a UUID; ask the hardware vendor or hypervisor administrator to set one."
}
if ($value -in @('00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff')) {
    throw "Win32_ComputerSystemProduct reports the placeholder $value, which identifies no machine."
}
if ($OutFile) {
    # ASCII without BOM so the Linux container reads exactly the UUID; the path taken literally, relative to
    # PowerShell's location (not the process's, which .NET would use).
    $OutFile = $ExecutionContext.SessionState.Path.GetUnresolvedProviderPathFromPSPath($OutFile)
    [System.IO.File]::WriteAllText($OutFile, "$value`n", [System.Text.Encoding]::ASCII)
    Write-Host "product_uuid written to $OutFile"
}
Write-Output $value
